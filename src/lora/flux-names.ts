/**
 * FLUX.1 LoRA module names of the original (BFL) transformer, as kohya's sd-scripts (with underscores:
 * `double_blocks_0_img_attn_qkv`, `single_blocks_3_linear1`, `final_layer_adaLN_modulation_1`),
 * ComfyUI and BFL (dotted: `double_blocks.0.img_attn.qkv`) write them, and XLabs' attention-processor
 * names (`double_blocks.0.processor.qkv_lora1`), mapped onto diffusers' FluxTransformer2DModel modules
 * for format.ts to resolve against the model.
 *
 * BFL fuses by output rows what diffusers keeps apart: a double block's `img_attn.qkv` is to_q, to_k
 * and to_v, a single block's `linear1` is to_q, to_k, to_v and proj_mlp. A LoRA on a fused module
 * becomes one LoRA per part, A the same for each and B cut into the parts' rows, as diffusers'
 * `_convert_kohya_flux_lora_to_diffusers` and `_convert_xlabs_flux_lora_to_diffusers`
 * (loaders/lora_conversion_utils.py) convert them. The rows each part takes are its module's output
 * size in the model, where diffusers writes FLUX.1's 3072 and 12288.
 */

/** How the B of one module of the file is dealt out to diffusers' modules. */
export type FluxRows =
  /** One module takes B as it is. */
  | 'whole'
  /** The modules' outputs stacked in order make B's rows; each takes its own block, A is shared. */
  | 'stacked'
  /** One module, B's two halves swapped: BFL's final adaLN gives [shift; scale], diffusers' [scale; shift]. */
  | 'halves-swapped';

/** The diffusers modules (dotted paths) that a BFL or XLabs module of a LoRA file is. */
export interface FluxTargets {
  readonly modules: readonly string[];
  readonly rows: FluxRows;
}

/** Parts of a double-stream block: BFL name after `double_blocks_<i>_` → diffusers path after `transformer_blocks.<i>.`. */
const DOUBLE_BLOCK: Readonly<Record<string, FluxTargets>> = {
  img_attn_qkv: { modules: ['attn.to_q', 'attn.to_k', 'attn.to_v'], rows: 'stacked' },
  txt_attn_qkv: { modules: ['attn.add_q_proj', 'attn.add_k_proj', 'attn.add_v_proj'], rows: 'stacked' },
  img_attn_proj: { modules: ['attn.to_out.0'], rows: 'whole' },
  txt_attn_proj: { modules: ['attn.to_add_out'], rows: 'whole' },
  img_mlp_0: { modules: ['ff.net.0.proj'], rows: 'whole' },
  img_mlp_2: { modules: ['ff.net.2'], rows: 'whole' },
  txt_mlp_0: { modules: ['ff_context.net.0.proj'], rows: 'whole' },
  txt_mlp_2: { modules: ['ff_context.net.2'], rows: 'whole' },
  img_mod_lin: { modules: ['norm1.linear'], rows: 'whole' },
  txt_mod_lin: { modules: ['norm1_context.linear'], rows: 'whole' },
};

/** Parts of a single-stream block, after `single_blocks_<i>_` → after `single_transformer_blocks.<i>.`. */
const SINGLE_BLOCK: Readonly<Record<string, FluxTargets>> = {
  linear1: { modules: ['attn.to_q', 'attn.to_k', 'attn.to_v', 'proj_mlp'], rows: 'stacked' },
  linear2: { modules: ['proj_out'], rows: 'whole' },
  modulation_lin: { modules: ['norm.linear'], rows: 'whole' },
};

/** Modules outside the blocks. */
const TOP_LEVEL: Readonly<Record<string, FluxTargets>> = {
  img_in: { modules: ['x_embedder'], rows: 'whole' },
  txt_in: { modules: ['context_embedder'], rows: 'whole' },
  time_in_in_layer: { modules: ['time_text_embed.timestep_embedder.linear_1'], rows: 'whole' },
  time_in_out_layer: { modules: ['time_text_embed.timestep_embedder.linear_2'], rows: 'whole' },
  vector_in_in_layer: { modules: ['time_text_embed.text_embedder.linear_1'], rows: 'whole' },
  vector_in_out_layer: { modules: ['time_text_embed.text_embedder.linear_2'], rows: 'whole' },
  guidance_in_in_layer: { modules: ['time_text_embed.guidance_embedder.linear_1'], rows: 'whole' },
  guidance_in_out_layer: { modules: ['time_text_embed.guidance_embedder.linear_2'], rows: 'whole' },
  final_layer_linear: { modules: ['proj_out'], rows: 'whole' },
  final_layer_adaLN_modulation_1: { modules: ['norm_out.linear'], rows: 'halves-swapped' },
};

/** The top-level names of BFL's FLUX modules; no diffusers UNet, SD3 or PixArt module starts so. */
const BFL_NAME =
  /^(double_blocks_\d+|single_blocks_\d+|img_in|txt_in|time_in|vector_in|guidance_in|final_layer)(_|$)/;

/** Whether a module name (dots or underscores) is in BFL's FLUX spelling (then `bflToDiffusers` maps it). */
export function isBflFluxName(name: string): boolean {
  return BFL_NAME.test(name.replace(/\./g, '_'));
}

/** Prefixes a block's part paths with the block's diffusers path. */
function inBlock(block: string, part: FluxTargets): FluxTargets {
  return { modules: part.modules.map((m) => `${block}.${m}`), rows: part.rows };
}

/**
 * The diffusers modules of a BFL module name, dotted or with underscores for dots (kohya's
 * `double_blocks_0_img_attn_qkv`), or the reason there are none: a part of a block that no LoRA of
 * diffusers' conversion reaches.
 */
export function bflToDiffusers(name: string): FluxTargets | { reason: string } {
  const flat = name.replace(/\./g, '_');
  const block = /^(double|single)_blocks_(\d+)_(.+)$/.exec(flat);
  if (block) {
    const [, kind, index, part] = block;
    const parts = kind === 'double' ? DOUBLE_BLOCK : SINGLE_BLOCK;
    if (Object.hasOwn(parts, part)) {
      const path = kind === 'double' ? `transformer_blocks.${index}` : `single_transformer_blocks.${index}`;
      return inBlock(path, parts[part]);
    }
    return {
      reason:
        `'${name}' is no LoRA module of a FLUX ${kind}-stream block (expected ${kind}_blocks_<i>_ and ` +
        `${Object.keys(parts).join(', ')})`,
    };
  }
  if (Object.hasOwn(TOP_LEVEL, flat)) return TOP_LEVEL[flat];
  return {
    reason:
      `'${name}' is no LoRA module of FLUX's BFL naming (expected double_blocks_<i>_…, ` +
      `single_blocks_<i>_…, ${Object.keys(TOP_LEVEL).join(', ')})`,
  };
}

/** XLabs' LoRA processors: `<block>.<i>.processor.<name>` → the parts of the block they are. */
const XLABS_DOUBLE: Readonly<Record<string, FluxTargets>> = {
  qkv_lora1: DOUBLE_BLOCK.img_attn_qkv,
  proj_lora1: DOUBLE_BLOCK.img_attn_proj,
  qkv_lora2: DOUBLE_BLOCK.txt_attn_qkv,
  proj_lora2: DOUBLE_BLOCK.txt_attn_proj,
};
const XLABS_SINGLE: Readonly<Record<string, FluxTargets>> = {
  // XLabs adds its qkv LoRA to the q, k, v rows of linear1 only, not to the MLP's.
  qkv_lora: { modules: ['attn.to_q', 'attn.to_k', 'attn.to_v'], rows: 'stacked' },
  // …and its proj LoRA to linear2, whose input is [attention; MLP] (15360 wide in FLUX.1).
  proj_lora: SINGLE_BLOCK.linear2,
};

/** Matches an XLabs module: `double_blocks.0.processor.qkv_lora1`, `single_blocks.3.processor.proj_lora`. */
const XLABS_MODULE = /^(double|single)_blocks\.(\d+)\.processor\.([A-Za-z0-9_]+)$/;

/** Whether a key of a LoRA file is in XLabs' naming (`[diffusion_model.]double_blocks.<i>.processor.…`). */
export function isXlabsKey(key: string): boolean {
  return /^(diffusion_model\.)?(double|single)_blocks\.\d+\.processor\./.test(key);
}

/** The diffusers modules of an XLabs module (`double_blocks.0.processor.qkv_lora1`), or why there are none. */
export function xlabsToDiffusers(module: string): FluxTargets | { reason: string } {
  const match = XLABS_MODULE.exec(module);
  if (!match)
    return {
      reason: `'${module}' is no XLabs LoRA module (expected double_blocks.<i>.processor.<name> or single_blocks.<i>.processor.<name>)`,
    };
  const [, kind, index, name] = match;
  const parts = kind === 'double' ? XLABS_DOUBLE : XLABS_SINGLE;
  if (!Object.hasOwn(parts, name)) {
    return {
      reason: `'${name}' is no XLabs LoRA of a ${kind}-stream block (expected ${Object.keys(parts).join(', ')})`,
    };
  }
  const path = kind === 'double' ? `transformer_blocks.${index}` : `single_transformer_blocks.${index}`;
  return inBlock(path, parts[name]);
}
