/**
 * Flash-SD3's σ schedule in float64, written from methods/tgate_flash.md §2.5 (not from the
 * scheduler): the training table's ends σmax = shifted(1), σmin = shifted(1/T); σ from
 * linspace(σmax·T, σmin·T, n)/T shifted again by σ ← s·σ/(1 + (s − 1)·σ); a final σ of 0.
 * Timesteps are σ·T.
 */
export function flashSigmas64(steps: number, shift: number, trainSteps = 1000): number[] {
  const shifted = (sigma: number): number => (shift * sigma) / (1 + (shift - 1) * sigma);
  const first = shifted(1) * trainSteps;
  const last = shifted(1 / trainSteps) * trainSteps;
  const sigmas: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t = steps === 1 ? first : first + (i * (last - first)) / (steps - 1);
    sigmas.push(shifted(t / trainSteps));
  }
  return [...sigmas, 0];
}
