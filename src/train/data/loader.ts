/**
 * Batches for training: shuffled epochs whose position is a small serialisable state, so a run
 * resumed from a checkpoint sees exactly the batches the uninterrupted run would have seen.
 *
 * Everything random is a function of (seed, epoch, position), never of a stream consumed so far: the
 * epoch's order is a Fisher–Yates shuffle drawn from MT19937 seeded with a hash of (seed, epoch), and
 * each draw's flip, caption dropout and caption variant come from a hash of (seed, epoch, position).
 * So the state is only {epoch, index, seed}, and a resumed loader may even use another batch size.
 */
import { OptionError } from '../../errors.js';
import { Mt19937 } from '../../random/mt19937.js';
import { splitIndices, type ImageTextDataset } from './dataset.js';
import type { SplitName } from './split.js';

/** Where a loader is: the next batch starts at position `index` of epoch `epoch`'s order. */
export interface LoaderState {
  readonly epoch: number;
  readonly index: number;
  readonly seed: number;
}

export interface LoaderOptions {
  readonly batchSize: number;
  /** Seed of the shuffle and of every per-image draw, a uint32 (default 0). Ignored when `state` is given. */
  readonly seed?: number;
  /** Which items (default 'train'). */
  readonly split?: SplitName | 'all';
  /** Shuffle each epoch (default true); false: data set order every epoch (evaluation). */
  readonly shuffle?: boolean;
  /**
   * Mirror each image left–right with probability 0.5 (default false): emoji are not mirror-symmetric
   * (text, arrows, flags, left/right-facing hands), so a flipped emoji would be a wrong training image.
   */
  readonly horizontalFlip?: boolean;
  /** Probability of replacing the caption by "" (default 0), for classifier-free guidance. */
  readonly captionDropout?: number;
  /** 'sample' (default): one of the image's caption variants per draw, by seed; 'first': the canonical one. */
  readonly captions?: 'sample' | 'first';
  /** Leave out an epoch's last, smaller batch (default true: one batch shape, one compiled graph). */
  readonly dropLast?: boolean;
  /**
   * At most this many images of one group (emoji: the base emoji, all its styles and skin tones) per
   * epoch, drawn afresh each epoch (default: all). Emoji with skin tones have 12 images against 2 for
   * the rest, so that People & Body would otherwise be about 60 % of every epoch; with 2, every emoji
   * counts the same and the skin tones take turns across epochs.
   */
  readonly maxPerGroup?: number;
  /** Resume here (from `loader.state` saved in a checkpoint). */
  readonly state?: LoaderState;
}

export interface Batch {
  /** [B, 3, H, W] in [-1, 1]: (byte / 127.5) − 1. */
  readonly images: Float32Array;
  readonly shape: readonly [number, number, number, number];
  /** One caption per image ("" where dropped). */
  readonly captions: readonly string[];
  /** Whether each image's caption was dropped (captionDropout): its prompt is the unconditional one. */
  readonly dropped: readonly boolean[];
  /** Class indices per image (emoji data sets only; see `dataset.labelNames`). */
  readonly labels:
    | { readonly category: Int32Array; readonly subcategory: Int32Array; readonly style: Int32Array }
    | undefined;
  /** Data set index of each image. */
  readonly indices: readonly number[];
  /** Whether each image was mirrored. */
  readonly flipped: readonly boolean[];
  /** The epoch the batch belongs to. */
  readonly epoch: number;
}

/** murmur3's 32-bit finaliser: every input bit affects every output bit. */
function mix32(value: number): number {
  let h = value >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** A uint32 hash of a few uint32 words, for seeding and per-draw decisions. */
function hashWords(...words: number[]): number {
  let h = 0x9e3779b9;
  for (const word of words) h = mix32((h ^ mix32(word >>> 0)) + 0x7f4a7c15);
  return h;
}

/** A uniform number in [0, 1) for one decision (`stream`) of one draw. */
function drawUniform(seed: number, epoch: number, position: number, stream: number): number {
  return hashWords(seed, epoch, position, stream) / 2 ** 32;
}

/** A uniform in [0, 1) from two draws (53 bits): the bias of ⌊u·n⌋ is then far below anything measurable. */
function uniform53(generator: Mt19937): number {
  return (generator.nextUint32() * 2 ** 21 + (generator.nextUint32() >>> 11)) / 2 ** 53;
}

const STREAM_FLIP = 1;
const STREAM_DROPOUT = 2;
const STREAM_CAPTION = 3;

function checkState(state: LoaderState, epochLength: number): void {
  const isCount = (n: number): boolean => Number.isSafeInteger(n) && n >= 0;
  if (!isCount(state.epoch) || !isCount(state.index) || !isCount(state.seed) || state.seed >= 2 ** 32) {
    throw new OptionError(
      `loader state ${JSON.stringify(state)}: expected {epoch, index} non-negative integers and seed a uint32`,
      'INVALID_LOADER_STATE',
    );
  }
  if (state.index > epochLength) {
    throw new OptionError(
      `loader state index ${state.index} is past the end of an epoch of ${epochLength} images: the ` +
        'checkpoint was saved with another data set or split',
      'INVALID_LOADER_STATE',
    );
  }
}

export class DataLoader {
  readonly #dataset: ImageTextDataset;
  readonly #members: readonly number[];
  readonly #batchSize: number;
  readonly #seed: number;
  readonly #shuffle: boolean;
  readonly #horizontalFlip: boolean;
  readonly #captionDropout: number;
  readonly #captions: 'sample' | 'first';
  readonly #dropLast: boolean;
  /** The split's members by group, in data set order; undefined: no per-group cap. */
  readonly #groups: readonly (readonly number[])[] | undefined;
  readonly #maxPerGroup: number;
  readonly #epochLength: number;
  #epoch: number;
  #index: number;
  /** The current epoch's order (data set indices), computed when the epoch is entered. */
  #order: number[];

  constructor(dataset: ImageTextDataset, options: LoaderOptions) {
    const { batchSize } = options;
    this.#members = splitIndices(dataset, options.split ?? 'train');
    if (!Number.isInteger(batchSize) || batchSize < 1) {
      throw new OptionError(`batchSize must be a positive integer, found ${batchSize}`, 'INVALID_BATCH_SIZE');
    }
    const maxPerGroup = options.maxPerGroup ?? Infinity;
    if (!(maxPerGroup === Infinity || (Number.isSafeInteger(maxPerGroup) && maxPerGroup >= 1))) {
      throw new OptionError(
        `maxPerGroup must be a positive integer (or left out for all), found ${maxPerGroup}`,
        'INVALID_MAX_PER_GROUP',
      );
    }
    this.#maxPerGroup = maxPerGroup;
    if (maxPerGroup === Infinity) {
      this.#groups = undefined;
      this.#epochLength = this.#members.length;
    } else {
      const groups = new Map<string, number[]>();
      for (const index of this.#members) {
        const key = dataset.items[index].group;
        const members = groups.get(key);
        if (members === undefined) groups.set(key, [index]);
        else members.push(index);
      }
      this.#groups = [...groups.values()];
      this.#epochLength = this.#groups.reduce((n, g) => n + Math.min(g.length, maxPerGroup), 0);
    }
    this.#dropLast = options.dropLast ?? true;
    if (this.#epochLength === 0 || (this.#dropLast && batchSize > this.#epochLength)) {
      throw new OptionError(
        `batchSize ${batchSize} needs at least that many images, and split '${options.split ?? 'train'}' ` +
          `has ${this.#epochLength} per epoch: lower the batch size or pass dropLast: false`,
        'INVALID_BATCH_SIZE',
      );
    }
    const captionDropout = options.captionDropout ?? 0;
    if (!(captionDropout >= 0 && captionDropout <= 1)) {
      throw new OptionError(
        `captionDropout must be in [0, 1], found ${captionDropout}`,
        'INVALID_CAPTION_DROPOUT',
      );
    }
    const state = options.state ?? { epoch: 0, index: 0, seed: options.seed ?? 0 };
    checkState(state, this.#epochLength);
    this.#dataset = dataset;
    this.#batchSize = batchSize;
    this.#seed = state.seed;
    this.#shuffle = options.shuffle ?? true;
    this.#horizontalFlip = options.horizontalFlip ?? false;
    this.#captionDropout = captionDropout;
    this.#captions = options.captions ?? 'sample';
    this.#epoch = state.epoch;
    this.#index = state.index;
    this.#order = this.#epochOrder(this.#epoch);
  }

  /** Where the next batch starts: save it in a checkpoint, pass it back as `state` to resume. */
  get state(): LoaderState {
    return { epoch: this.#epoch, index: this.#index, seed: this.#seed };
  }

  /** Images per epoch: the chosen split's, or fewer under maxPerGroup. */
  get epochLength(): number {
    return this.#epochLength;
  }

  /** Batches per epoch. */
  get batchesPerEpoch(): number {
    const n = this.#epochLength / this.#batchSize;
    return this.#dropLast ? Math.floor(n) : Math.ceil(n);
  }

  /**
   * The epoch's order: Fisher–Yates over the split's indices with MT19937 seeded by hash(seed, epoch).
   * Under maxPerGroup the epoch's members are first drawn per group, from a generator of their own
   * (hash(seed, epoch, 'GP')), also without shuffle, so an evaluation pass covers the groups evenly.
   */
  #epochOrder(epoch: number): number[] {
    let order: number[];
    if (this.#groups === undefined) {
      order = [...this.#members];
    } else {
      const picker = new Mt19937(hashWords(this.#seed, epoch, 0x4750));
      order = [];
      for (const group of this.#groups) {
        if (group.length <= this.#maxPerGroup) {
          order.push(...group);
          continue;
        }
        // The first maxPerGroup places of a partial Fisher–Yates, kept in data set order.
        const members = [...group];
        for (let i = 0; i < this.#maxPerGroup; i++) {
          const j = i + Math.floor(uniform53(picker) * (members.length - i));
          [members[i], members[j]] = [members[j], members[i]];
        }
        order.push(...members.slice(0, this.#maxPerGroup).sort((a, b) => a - b));
      }
    }
    if (!this.#shuffle) return order;
    const generator = new Mt19937(hashWords(this.#seed, epoch, 0x5348));
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(uniform53(generator) * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
    return order;
  }

  /** The next batch; crosses into the next epoch (reshuffled) when this one is used up. */
  next(): Batch {
    const remaining = this.#order.length - this.#index;
    if (remaining === 0 || (this.#dropLast && remaining < this.#batchSize)) {
      this.#epoch += 1;
      this.#index = 0;
      this.#order = this.#epochOrder(this.#epoch);
    }
    const epoch = this.#epoch;
    const start = this.#index;
    const count = Math.min(this.#batchSize, this.#order.length - start);
    const { size, items, pixels } = this.#dataset;
    const plane = size * size;
    const images = new Float32Array(count * 3 * plane);
    const captions: string[] = [];
    const indices: number[] = [];
    const flipped: boolean[] = [];
    const droppedCaptions: boolean[] = [];
    const labels =
      this.#dataset.labelNames === undefined
        ? undefined
        : {
            category: new Int32Array(count),
            subcategory: new Int32Array(count),
            style: new Int32Array(count),
          };
    for (let b = 0; b < count; b++) {
      const position = start + b;
      const index = this.#order[position];
      const item = items[index];
      const flip = this.#horizontalFlip && drawUniform(this.#seed, epoch, position, STREAM_FLIP) < 0.5;
      // HWC bytes → CHW floats, mirrored by reading each row backwards.
      const source = index * plane * 3;
      const target = b * 3 * plane;
      for (let y = 0; y < size; y++) {
        for (let x = 0; x < size; x++) {
          const from = source + (y * size + (flip ? size - 1 - x : x)) * 3;
          const to = target + y * size + x;
          images[to] = pixels[from] / 127.5 - 1;
          images[to + plane] = pixels[from + 1] / 127.5 - 1;
          images[to + 2 * plane] = pixels[from + 2] / 127.5 - 1;
        }
      }
      const dropped =
        this.#captionDropout > 0 &&
        drawUniform(this.#seed, epoch, position, STREAM_DROPOUT) < this.#captionDropout;
      const variant =
        this.#captions === 'first'
          ? 0
          : Math.floor(drawUniform(this.#seed, epoch, position, STREAM_CAPTION) * item.captions.length);
      captions.push(dropped ? '' : item.captions[variant]);
      droppedCaptions.push(dropped);
      if (labels !== undefined && item.labels !== undefined) {
        labels.category[b] = item.labels.category;
        labels.subcategory[b] = item.labels.subcategory;
        labels.style[b] = item.labels.style;
      }
      indices.push(index);
      flipped.push(flip);
    }
    this.#index = start + count;
    return {
      images,
      shape: [count, 3, size, size],
      captions,
      dropped: droppedCaptions,
      labels,
      indices,
      flipped,
      epoch,
    };
  }
}
