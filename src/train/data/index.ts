// Training data: the emoji data set, a user's image folder, the cache, the split and the loader.
export { loadEmojiDataset } from './emoji-dataset.js';
export type { EmojiDatasetOptions } from './emoji-dataset.js';
export { loadImageFolder, METADATA_FILE } from './imagefolder.js';
export type { ImageFolderOptions } from './imagefolder.js';
export { datasetImage, splitIndices } from './dataset.js';
export type { DatasetItem, ImageTextDataset, ItemLabels, LabelNames } from './dataset.js';
export { DataLoader } from './loader.js';
export type { Batch, LoaderOptions, LoaderState } from './loader.js';
export {
  EMOJI_PACKAGE,
  EMOJI_SETS,
  EMOJI_STYLE,
  EMOJIBASE_PACKAGE,
  readEmojiCatalogue,
  resolveEmojiSources,
} from './emoji.js';
export type { EmojiCatalogue, EmojiCatalogueOptions, EmojiRecord, EmojiSet, EmojiSources } from './emoji.js';
export { CAPTION_FORMAT_VERSION, emojiCaptions, emojiDisplayName } from './captions.js';
export { splitMembers } from './split.js';
export type { SplitMember, SplitName } from './split.js';
export { defaultCacheDir } from './cache.js';
export { compositeOnWhite, decodeImage, detectImageFormat, fitToSquare, PREPARE_VERSION } from './image.js';
export type { ImageFormat, RgbaImage } from './image.js';
export { DatasetError, describeBadFile } from './errors.js';
export type { BadFile, BadFileKind } from './errors.js';
