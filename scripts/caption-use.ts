// How much a text-to-image model's denoiser uses its caption, by noise level: the error of the clean
// latent x₀ its prediction implies (ε- or v-prediction, as its scheduler says) on training emoji with
// the true caption, another emoji's caption and none.
//
//   node --import tsx scripts/caption-use.ts [MODEL_DIR]   (default models/emoji)
//
// 48 training emoji (a fixed draw), their VAE latent means, one noise draw per timestep. Not part of
// the package.
import { loadEmojiDataset } from '../src/train/data/emoji-dataset.js';
import { splitIndices, datasetImage } from '../src/train/data/dataset.js';
import { PixArtPipeline } from '../src/pipelines/pixart.js';
import { TorchGenerator } from '../src/random/torch-generator.js';
import { hostTensor } from '../src/runtime/host-tensor.js';
import { Runtime } from '../src/runtime/runtime.js';

const [modelDir = 'models/emoji'] = process.argv.slice(2);
const COUNT = 48;
const TIMESTEPS = [200, 500, 800, 950];

const runtime = new Runtime({ threads: 1 });
const pipe = await PixArtPipeline.fromPretrained(modelDir, { runtime });
try {
  const vae = pipe.vae;
  const encoder = pipe.promptEncoder;
  if (!vae || !encoder) throw new Error(`${modelDir}: needs a VAE and a text encoder`);
  const dataset = await loadEmojiDataset({ size: pipe.defaultSize });
  const train = splitIndices(dataset, 'train');
  const pick = new TorchGenerator(2024).rand([COUNT]);
  const items = Array.from(pick, (u) => train[Math.floor(u * train.length)]);
  const size = dataset.size;
  const images = new Float32Array(COUNT * 3 * size * size);
  items.forEach((index, n) => {
    const rgb = datasetImage(dataset, index);
    for (let p = 0; p < size * size; p++)
      for (let c = 0; c < 3; c++) images[(n * 3 + c) * size * size + p] = rgb[p * 3 + c] / 127.5 - 1;
  });
  const encoded = await vae.encode(hostTensor('float32', [COUNT, 3, size, size], images));
  const scale = vae.config.scalingFactor;
  const x0 = Float32Array.from(encoded.latentMean.data as Float32Array, (v) => v * scale);
  const shape = encoded.latentMean.shape as number[];
  const per = x0.length / COUNT;
  const captions = items.map((i) => dataset.items[i].captions[0]);
  const conditions = {
    true: captions,
    other: captions.map((_, i) => captions[(i + 7) % COUNT]),
    none: captions.map(() => ''),
  };
  const maxLength = pipe.defaultMaxSequenceLength;
  const encodedCaptions = Object.fromEntries(
    await Promise.all(
      Object.entries(conditions).map(async ([k, c]) => [k, await encoder.encode(c, maxLength)] as const),
    ),
  );
  const alphas = (pipe.scheduler as unknown as { alphasCumprod: Float32Array }).alphasCumprod;
  const predictionType = (pipe.scheduler.config as { prediction_type?: string }).prediction_type ?? 'epsilon';
  const meanSquare = x0.reduce((sum, v) => sum + v * v, 0) / x0.length;
  console.log(
    `${modelDir} (${predictionType}): x₀-MSE of the implied clean latent on ${COUNT} training emoji, by timestep and caption; ` +
      `the latents' mean square (x₀-MSE of predicting 0) is ${meanSquare.toFixed(3)}`,
  );
  for (const t of TIMESTEPS) {
    const noise = new TorchGenerator(t).randn(shape);
    const a = alphas[t];
    const xt = Float32Array.from(x0, (v, i) => Math.sqrt(a) * v + Math.sqrt(1 - a) * noise[i]);
    const row = [`t=${t} (ᾱ ${a.toExponential(2)})`];
    for (const [name, c] of Object.entries(encodedCaptions)) {
      const out = await pipe.transformer.forward({
        hidden_states: hostTensor('float32', shape, xt),
        timestep: hostTensor('float32', [COUNT], new Float32Array(COUNT).fill(t)),
        encoder_hidden_states: c.embeds,
        encoder_attention_mask: c.mask,
      });
      const p = out.sample.data as Float32Array;
      const channels = shape[1];
      const outChannels = (out.sample.shape as number[])[1];
      // The implied clean latent: x₀ = (x_t − √(1−ᾱ)·ε)/√ᾱ, or √ᾱ·x_t − √(1−ᾱ)·v.
      let se = 0;
      for (let n = 0; n < COUNT; n++)
        for (let k = 0; k < per; k++) {
          const predicted = p[n * (per / channels) * outChannels + k];
          const x = xt[n * per + k];
          const clean =
            predictionType === 'v_prediction'
              ? Math.sqrt(a) * x - Math.sqrt(1 - a) * predicted
              : (x - Math.sqrt(1 - a) * predicted) / Math.sqrt(a);
          se += (clean - x0[n * per + k]) ** 2;
        }
      const mse = se / x0.length;
      row.push(`${name} ${mse.toFixed(3)}`);
    }
    console.log(row.join('  '));
  }
} finally {
  await pipe.close();
  await runtime.dispose();
}
