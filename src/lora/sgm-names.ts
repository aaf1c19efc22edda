/**
 * kohya module names in the original SGM/ldm UNet spelling (`input_blocks_4_1_transformer_blocks_0_attn1_to_q`,
 * `middle_block_1_…`, `output_blocks_2_2_conv`, `…_in_layers_2`, `time_embed_0`, `label_emb_0_0`),
 * as kohya's SDXL trainer writes them, renamed to diffusers' (`down_blocks_1_attentions_0_…`) still
 * flattened with underscores, for format.ts to resolve against the model.
 *
 * diffusers does this in `_maybe_map_sgm_blocks_to_diffusers` + `_convert_unet_lora_key`
 * (loaders/lora_conversion_utils.py, for SD 1.x and SDXL alike). Here the block numbering is counted
 * from the UNet's levels rather than from `layers_per_block + 1` strides, so that an up level
 * without attention gets its upsampler at inner index 1 (SD 1.x's `output_blocks_2_1_conv`), where
 * diffusers' stride rule would read an attention.
 */

/** The levels of a UNet as SGM numbers its blocks; unet/config.ts's `down`, `mid` and `up` fit this shape. */
export interface SgmUNetLayout {
  readonly down: readonly {
    readonly layers: number;
    readonly attention?: unknown;
    readonly addDownsample: boolean;
  }[];
  readonly mid: { readonly attention?: unknown } | null;
  readonly up: readonly {
    readonly layers: number;
    readonly attention?: unknown;
    readonly addUpsample: boolean;
  }[];
}

/** SGM modules outside the block lists, by their flattened names. */
const TOP_LEVEL: Readonly<Record<string, string>> = {
  time_embed_0: 'time_embedding_linear_1',
  time_embed_2: 'time_embedding_linear_2',
  label_emb_0_0: 'add_embedding_linear_1',
  label_emb_0_2: 'add_embedding_linear_2',
  input_blocks_0_0: 'conv_in',
  out_0: 'conv_norm_out',
  out_2: 'conv_out',
};

/** ldm's ResBlock submodules → diffusers' ResnetBlock2D. */
const RESNET_PARTS: Readonly<Record<string, string>> = {
  in_layers_0: 'norm1',
  in_layers_2: 'conv1',
  emb_layers_1: 'time_emb_proj',
  out_layers_0: 'norm2',
  out_layers_3: 'conv2',
  skip_connection: 'conv_shortcut',
};

type Part = 'resnet' | 'attention' | 'downsampler' | 'upsampler';

/** One sub-module of an SGM block: the diffusers module it is, and what kind. */
interface SgmSlot {
  readonly path: string;
  readonly part: Part;
}

/** Where each SGM block `<n>_<inner>` (input/output) or `<n>` (middle) sits in diffusers' layout. */
export interface SgmBlockMap {
  readonly input: ReadonlyMap<string, SgmSlot>;
  readonly middle: ReadonlyMap<string, SgmSlot>;
  readonly output: ReadonlyMap<string, SgmSlot>;
}

/**
 * SGM's numbering: input block 0 is conv_in, then per down level one block per resnet (inner 0 the
 * resnet, 1 its transformer) and one for the downsampler (inner 0, `op`); the middle block is resnet,
 * transformer, resnet; output blocks are one per up-level resnet, the level's upsampler inside its
 * last block after the resnet (and transformer).
 */
export function sgmBlockMap(layout: SgmUNetLayout): SgmBlockMap {
  const input = new Map<string, SgmSlot>();
  let n = 1;
  layout.down.forEach((level, i) => {
    for (let j = 0; j < level.layers; j++, n++) {
      input.set(`${n}_0`, { path: `down_blocks_${i}_resnets_${j}`, part: 'resnet' });
      if (level.attention)
        input.set(`${n}_1`, { path: `down_blocks_${i}_attentions_${j}`, part: 'attention' });
    }
    if (level.addDownsample)
      input.set(`${n++}_0`, { path: `down_blocks_${i}_downsamplers_0`, part: 'downsampler' });
  });
  const middle = new Map<string, SgmSlot>();
  if (layout.mid) {
    const parts: SgmSlot[] = [{ path: 'mid_block_resnets_0', part: 'resnet' }];
    if (layout.mid.attention) parts.push({ path: 'mid_block_attentions_0', part: 'attention' });
    parts.push({ path: 'mid_block_resnets_1', part: 'resnet' });
    parts.forEach((slot, k) => middle.set(`${k}`, slot));
  }
  const output = new Map<string, SgmSlot>();
  n = 0;
  layout.up.forEach((level, i) => {
    for (let j = 0; j < level.layers; j++, n++) {
      output.set(`${n}_0`, { path: `up_blocks_${i}_resnets_${j}`, part: 'resnet' });
      if (level.attention)
        output.set(`${n}_1`, { path: `up_blocks_${i}_attentions_${j}`, part: 'attention' });
      if (level.addUpsample && j === level.layers - 1) {
        output.set(`${n}_${level.attention ? 2 : 1}`, {
          path: `up_blocks_${i}_upsamplers_0`,
          part: 'upsampler',
        });
      }
    }
  });
  return { input, middle, output };
}

/** Matches an SGM block name: the block list, its block number, the inner index (not for middle_block) and the rest. */
const SGM_BLOCK = /^(?:(input_blocks|output_blocks)_(\d+)_(\d+)|(middle_block)_(\d+))(?:_(.+))?$/;

/** Whether a flattened kohya name is in SGM spelling (then `sgmToDiffusersName` renames it). */
export function isSgmName(name: string): boolean {
  return Object.hasOwn(TOP_LEVEL, name) || SGM_BLOCK.test(name);
}

/**
 * The diffusers name (flattened with underscores) of an SGM-spelled kohya module name, or the
 * reason there is none in this UNet: a block number or inner index its levels do not have.
 */
export function sgmToDiffusersName(name: string, blocks: SgmBlockMap): string | { reason: string } {
  if (Object.hasOwn(TOP_LEVEL, name)) return TOP_LEVEL[name];
  const match = SGM_BLOCK.exec(name);
  if (!match)
    return { reason: `'${name}' is not an SGM (input_blocks/middle_block/output_blocks) module name` };
  const [, list, number, inner, middle, middleNumber, rest] = match;
  const key = middle ? middleNumber : `${number}_${inner}`;
  const map = middle ? blocks.middle : list === 'input_blocks' ? blocks.input : blocks.output;
  const slot = map.get(key);
  if (slot === undefined) {
    const block = middle ? `middle_block_${middleNumber}` : `${list}_${number}_${inner}`;
    const valid = [...map.keys()].map((k) => `${middle ?? list}_${k}`);
    return {
      reason:
        `'${name}' is in SGM block '${block}', which this UNet does not have (its levels give ` +
        `${valid.length > 0 ? valid.join(', ') : `no ${middle ?? list}`}); the LoRA was made for another UNet`,
    };
  }
  if (rest === undefined)
    return { reason: `'${name}' names SGM block ${slot.part} '${key}' but no module in it` };
  let inside = rest;
  if (slot.part === 'resnet') inside = RESNET_PARTS[rest] ?? rest;
  else if (slot.part === 'downsampler' && rest === 'op') inside = 'conv';
  return `${slot.path}_${inside}`;
}

/**
 * A UNet's levels read from its module paths (`down_blocks.<i>.resnets.<j>`, `….attentions.<j>`,
 * `….downsamplers.0`, `mid_block.attentions.0`, …): the same numbers as its config.json gives, for a
 * caller that has only the weights. Undefined when the modules are not a diffusers UNet's.
 */
export function unetLayoutOfModules(modules: Iterable<string>): SgmUNetLayout | undefined {
  type Level = { layers: number; attention: boolean; resample: boolean };
  const down: Level[] = [];
  const up: Level[] = [];
  let mid: { attention: boolean } | null = null;
  const level = (levels: Level[], i: number): Level =>
    (levels[i] ??= { layers: 0, attention: false, resample: false });
  for (const path of modules) {
    const block =
      /^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\./.exec(path);
    if (block) {
      const entry = level(block[1] === 'down_blocks' ? down : up, Number(block[2]));
      if (block[3] === 'resnets') entry.layers = Math.max(entry.layers, Number(block[4]) + 1);
      else if (block[3] === 'attentions') entry.attention = true;
      else entry.resample = true;
    } else if (path.startsWith('mid_block.')) {
      mid ??= { attention: false };
      if (path.startsWith('mid_block.attentions.')) mid.attention = true;
    }
  }
  // Spreading a sparse array gives undefined for its holes: a level number with no modules.
  const complete = (levels: Level[]): boolean =>
    levels.length > 0 && [...levels].every((l) => l !== undefined);
  if (!complete(down) || !complete(up)) return undefined;
  return {
    down: down.map((l) => ({ layers: l.layers, attention: l.attention, addDownsample: l.resample })),
    mid,
    up: up.map((l) => ({ layers: l.layers, attention: l.attention, addUpsample: l.resample })),
  };
}
