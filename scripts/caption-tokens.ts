// Which words of a prompt the denoiser uses: for each token of the prompt, the RMS change of the
// transformer's prediction when that one token is masked out of the cross-attention, beside the
// change when the whole caption is replaced by the empty one (unconditional). A token whose masking
// changes little is one the model does not read.
//
//   node --import tsx scripts/caption-tokens.ts [MODEL_DIR] ["prompt" …]   (default models/emoji)
//
// One noise draw per timestep (seed = the timestep), the same for every row. Not part of the package.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

import { PixArtPipeline } from '../src/pipelines/pixart.js';
import { TorchGenerator } from '../src/random/torch-generator.js';
import { hostTensor } from '../src/runtime/host-tensor.js';
import { Runtime } from '../src/runtime/runtime.js';
import { T5Tokenizer } from '../src/tokenizers/t5-tokenizer.js';

const [modelDir = 'models/emoji', ...given] = process.argv.slice(2);
const PROMPTS = given.length
  ? given
  : [
      'dog face, noto style',
      'red heart, noto style',
      'flag: japan, twemoji style',
      'man golfing, noto style',
      'pizza, twemoji style',
    ];
const TIMESTEPS = [900, 500];
const MAX_LENGTH = 32;

const runtime = new Runtime({ threads: 1 });
const pipe = await PixArtPipeline.fromPretrained(modelDir, { runtime });
try {
  const encoder = pipe.promptEncoder;
  if (!encoder) throw new Error(`${modelDir}: needs a text encoder`);
  const tokenizer = await T5Tokenizer.fromPretrained(join(modelDir, 'tokenizer'));
  const vocab = (
    JSON.parse(await readFile(join(modelDir, 'tokenizer', 'tokenizer.json'), 'utf8')) as {
      model: { vocab: [string, number][] };
    }
  ).model.vocab;
  const { inChannels: channels } = pipe.transformer.config;
  const side = pipe.defaultSize / pipe.vaeScaleFactor;
  console.log(
    `${modelDir}: RMS change of the prediction when the caption is dropped (uncond) and when one token is masked`,
  );
  for (const prompt of PROMPTS) {
    const text = prompt.toLowerCase().trim();
    const ids = tokenizer.encode([text], { maxLength: MAX_LENGTH, padding: 'max_length', truncation: true })
      .inputIds[0];
    const c = await encoder.encode([prompt, ''], MAX_LENGTH);
    const [, length, width] = c.embeds.shape as number[];
    const mask = c.mask.data as Float32Array;
    const tokens = Array.from(mask.subarray(0, length)).filter((v) => v > 0).length;
    // Rows: the full caption, each token masked in turn, the empty caption.
    const rows = tokens + 2;
    const embeds = new Float32Array(rows * length * width);
    const masks = new Float32Array(rows * length);
    const all = c.embeds.data as Float32Array;
    for (let r = 0; r < rows - 1; r++) {
      embeds.set(all.subarray(0, length * width), r * length * width);
      masks.set(mask.subarray(0, length), r * length);
      if (r > 0) masks[r * length + r - 1] = 0;
    }
    embeds.set(all.subarray(length * width, 2 * length * width), (rows - 1) * length * width);
    masks.set(mask.subarray(length, 2 * length), (rows - 1) * length);
    const names = ids.slice(0, tokens).map((id) => vocab[id]?.[0] ?? `#${id}`);
    console.log(`${JSON.stringify(prompt)}: tokens ${names.map((n) => JSON.stringify(n)).join(' ')}`);
    for (const t of TIMESTEPS) {
      const one = new TorchGenerator(t).randn([1, channels, side, side]);
      const x = new Float32Array(rows * one.length);
      for (let r = 0; r < rows; r++) x.set(one, r * one.length);
      const out = await pipe.transformer.forward({
        hidden_states: hostTensor('float32', [rows, channels, side, side], x),
        timestep: hostTensor('float32', [rows], new Float32Array(rows).fill(t)),
        encoder_hidden_states: hostTensor('float32', [rows, length, width], embeds),
        encoder_attention_mask: hostTensor('float32', [rows, length], masks),
      });
      const p = out.sample.data as Float32Array;
      const per = p.length / rows;
      const change = (r: number): number => {
        let s = 0;
        for (let k = 0; k < per; k++) s += (p[k] - p[r * per + k]) ** 2;
        return Math.sqrt(s / per);
      };
      const masked = names.map((n, k) => `${n} ${change(k + 1).toFixed(3)}`).join(', ');
      console.log(`  t=${t}: uncond ${change(rows - 1).toFixed(3)}; masked: ${masked}`);
    }
  }
} finally {
  await pipe.close();
  await runtime.dispose();
}
