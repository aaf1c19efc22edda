/**
 * The emoji catalogue: one record per image of the `emoji-datasource-google` (Noto) and
 * `emoji-datasource-twitter` (Twemoji) packages, skin-tone variants included, with the words its
 * captions are made of. The packages give images, short names, category and subcategory; their
 * `name` is the Unicode character name ("HEAVY BLACK HEART"), so the name people use ("red heart",
 * CLDR's) and the keywords come from `emojibase-data`. All three are development dependencies:
 * training data is not shipped with velodiff.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { describeJson, isPlainObject } from '../../io/json.js';
import { DatasetError } from './errors.js';

/** The image sets, named as the packages name them. */
export type EmojiSet = 'google' | 'twitter';
export const EMOJI_SETS: readonly EmojiSet[] = ['google', 'twitter'];

/** The style word each set has in captions: "…, noto style", "…, twemoji style". */
export const EMOJI_STYLE: Readonly<Record<EmojiSet, string>> = { google: 'noto', twitter: 'twemoji' };

export const EMOJI_PACKAGE: Readonly<Record<EmojiSet, string>> = {
  google: 'emoji-datasource-google',
  twitter: 'emoji-datasource-twitter',
};
export const EMOJIBASE_PACKAGE = 'emojibase-data';

/** The Unicode skin-tone modifiers and their CLDR names (emoji-datasource keys skin variations by them). */
const SKIN_TONE_NAMES: Readonly<Record<string, string>> = {
  '1F3FB': 'light skin tone',
  '1F3FC': 'medium-light skin tone',
  '1F3FD': 'medium skin tone',
  '1F3FE': 'medium-dark skin tone',
  '1F3FF': 'dark skin tone',
};

/** One image of one set. */
export interface EmojiRecord {
  readonly set: EmojiSet;
  /** The code points of this image, as emoji-datasource writes them: '1F385-1F3FE'. */
  readonly unified: string;
  /** The code points of the emoji without skin tone: '1F385'. Both sets and all tones share it. */
  readonly baseUnified: string;
  /** Absolute path of the 64×64 PNG. */
  readonly imagePath: string;
  /** CLDR name, as emojibase-data has it: 'Santa Claus', 'red heart', 'flag: Japan'. */
  readonly name: string;
  /** CLDR skin-tone names of this variant, in order: ['medium-dark skin tone']; empty for none. */
  readonly skinTones: readonly string[];
  /** emoji-datasource short names: ['santa']. */
  readonly shortNames: readonly string[];
  /** emojibase-data keywords (CLDR annotations): ['celebration', 'christmas', …]. */
  readonly keywords: readonly string[];
  /** emoji-datasource category: 'People & Body'. */
  readonly category: string;
  /** emoji-datasource subcategory: 'person-fantasy'. */
  readonly subcategory: string;
  /** emoji-datasource sort order of the base emoji (Unicode's emoji ordering). */
  readonly sortOrder: number;
}

/** Where the three packages are. */
export interface EmojiSources {
  /** The folder of each set's package (only the sets in use need one). */
  readonly packageDirs: Readonly<Partial<Record<EmojiSet, string>>>;
  readonly emojibaseDir: string;
}

/** The package folder of a set, or an error naming the set the sources lack. */
function packageDir(sources: EmojiSources, set: EmojiSet): string {
  const dir = sources.packageDirs[set];
  if (dir === undefined) {
    throw new DatasetError(
      `No package folder given for the '${set}' set (${EMOJI_PACKAGE[set]})`,
      'EMOJI_PACKAGE_MISSING',
    );
  }
  return dir;
}

/**
 * Finds an installed package's folder: first from the current directory (a project that installed
 * the packages itself), then from velodiff's own location (a checkout of velodiff).
 */
function resolvePackageDir(name: string): string {
  const bases = [join(process.cwd(), 'package.json'), import.meta.url];
  for (const base of bases) {
    try {
      return dirname(createRequire(base).resolve(`${name}/package.json`));
    } catch {
      // Not installed from there; try the next place.
    }
  }
  throw new DatasetError(
    `The emoji training data needs the npm package '${name}', which is not installed. The emoji ` +
      `image and metadata packages are development dependencies of velodiff (training data is not ` +
      `shipped with it): in a checkout run \`npm ci\`; in your own project run \`npm install --save-dev ` +
      `emoji-datasource-google@16 emoji-datasource-twitter@16 emojibase-data@17\`.`,
    'EMOJI_PACKAGE_MISSING',
  );
}

/** The installed packages of the given sets (and emojibase-data), or an error saying what to install. */
export function resolveEmojiSources(sets: readonly EmojiSet[] = EMOJI_SETS): EmojiSources {
  const packageDirs: Partial<Record<EmojiSet, string>> = {};
  for (const set of sets) packageDirs[set] = resolvePackageDir(EMOJI_PACKAGE[set]);
  return { packageDirs, emojibaseDir: resolvePackageDir(EMOJIBASE_PACKAGE) };
}

/** The image folder of a set inside its package: `img/<set>/64/` (the only size of single images). */
export function emojiImageDir(sources: EmojiSources, set: EmojiSet): string {
  return join(packageDir(sources, set), 'img', set, '64');
}

/** The metadata files a catalogue is made of, for the cache key. */
export function emojiMetadataFiles(sources: EmojiSources, sets: readonly EmojiSet[]): string[] {
  return [
    ...sets.map((set) => join(packageDir(sources, set), 'emoji.json')),
    join(sources.emojibaseDir, 'en', 'data.json'),
  ];
}

interface DatasourceImage {
  readonly unified: string;
  readonly image: string;
  readonly hasImage: boolean;
}

interface DatasourceEntry extends DatasourceImage {
  /** The Unicode character name: 'HEAVY BLACK HEART'. */
  readonly unicodeName: string;
  readonly shortNames: readonly string[];
  readonly category: string;
  readonly subcategory: string;
  readonly sortOrder: number;
  /** Keyed by the skin-tone modifiers: '1F3FB', '1F3FB-1F3FC'. */
  readonly skinVariations: ReadonlyMap<string, DatasourceImage>;
}

function fieldError(file: string, index: number, field: string, found: unknown): DatasetError {
  return new DatasetError(
    `${file}: entry ${index} has no valid "${field}" (found ${describeJson(found)}); the package is ` +
      `not the emoji-datasource layout this reader knows (version 16). Reinstall it with \`npm ci\`.`,
    'EMOJI_METADATA_INVALID',
    file,
  );
}

function stringField(entry: Record<string, unknown>, field: string, file: string, index: number): string {
  const value = entry[field];
  if (typeof value !== 'string' || value === '') throw fieldError(file, index, field, value);
  return value;
}

function parseImage(
  entry: Record<string, unknown>,
  set: EmojiSet,
  file: string,
  index: number,
): DatasourceImage {
  return {
    unified: stringField(entry, 'unified', file, index),
    image: stringField(entry, 'image', file, index),
    hasImage: entry[`has_img_${set}`] === true,
  };
}

async function readJson(file: string): Promise<unknown> {
  const text = await readFile(file, 'utf8');
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    throw new DatasetError(
      `${file} is not valid JSON (${(error as Error).message}). Reinstall the package with \`npm ci\`.`,
      'EMOJI_METADATA_INVALID',
      file,
    );
  }
}

async function readDatasource(file: string, set: EmojiSet): Promise<DatasourceEntry[]> {
  const json = await readJson(file);
  if (!Array.isArray(json)) {
    throw new DatasetError(
      `${file}: expected an array of emoji, found ${describeJson(json)}`,
      'EMOJI_METADATA_INVALID',
      file,
    );
  }
  return json.map((entry: unknown, index): DatasourceEntry => {
    if (!isPlainObject(entry)) throw fieldError(file, index, 'unified', entry);
    const shortNames = entry.short_names;
    if (!Array.isArray(shortNames) || !shortNames.every((s) => typeof s === 'string')) {
      throw fieldError(file, index, 'short_names', shortNames);
    }
    const sortOrder = entry.sort_order;
    if (typeof sortOrder !== 'number') throw fieldError(file, index, 'sort_order', sortOrder);
    const skinVariations = new Map<string, DatasourceImage>();
    if (entry.skin_variations !== undefined) {
      if (!isPlainObject(entry.skin_variations))
        throw fieldError(file, index, 'skin_variations', entry.skin_variations);
      for (const [tones, variation] of Object.entries(entry.skin_variations)) {
        if (!isPlainObject(variation)) throw fieldError(file, index, `skin_variations.${tones}`, variation);
        skinVariations.set(tones, parseImage(variation, set, file, index));
      }
    }
    return {
      ...parseImage(entry, set, file, index),
      unicodeName: stringField(entry, 'name', file, index),
      shortNames: shortNames as string[],
      category: stringField(entry, 'category', file, index),
      subcategory: stringField(entry, 'subcategory', file, index),
      sortOrder,
      skinVariations,
    };
  });
}

/** emojibase hexcodes drop the variation selector FE0F that emoji-datasource keeps: compare without it. */
function hexcodeKey(hexcode: string): string {
  return hexcode
    .toUpperCase()
    .split('-')
    .filter((codePoint) => codePoint !== 'FE0F')
    .join('-');
}

interface EmojibaseEntry {
  readonly label: string;
  readonly tags: readonly string[];
}

/** emojibase-data's English labels and tags, by hexcode key; skin variations inherit the base's tags. */
async function readEmojibase(file: string): Promise<Map<string, EmojibaseEntry>> {
  const json = await readJson(file);
  if (!Array.isArray(json)) {
    throw new DatasetError(
      `${file}: expected an array of emoji, found ${describeJson(json)}`,
      'EMOJI_METADATA_INVALID',
      file,
    );
  }
  const byHexcode = new Map<string, EmojibaseEntry>();
  for (const entry of json as unknown[]) {
    if (!isPlainObject(entry) || typeof entry.hexcode !== 'string' || typeof entry.label !== 'string')
      continue;
    const tags = Array.isArray(entry.tags)
      ? entry.tags.filter((t): t is string => typeof t === 'string')
      : [];
    byHexcode.set(hexcodeKey(entry.hexcode), { label: entry.label, tags });
  }
  return byHexcode;
}

/** Which images to take. */
export interface EmojiCatalogueOptions {
  readonly sets?: readonly EmojiSet[];
  /** 'all' (default): every skin-tone variant is an image of its own; 'none': base emoji only. */
  readonly skinTones?: 'all' | 'none';
  /** Only these base emoji (emoji-datasource `unified`, e.g. '2764-FE0F'), for quick runs and tests. */
  readonly unified?: readonly string[];
  /** Package folders; found with `resolveEmojiSources` when absent. */
  readonly sources?: EmojiSources;
}

/** The images, and the label vocabularies of the whole package (not only of the images taken). */
export interface EmojiCatalogue {
  readonly records: readonly EmojiRecord[];
  /** Every category in Unicode's order: the classifier's and the alignment metric's label names. */
  readonly categories: readonly string[];
  /** Every subcategory in Unicode's order (each belongs to one category). */
  readonly subcategories: readonly string[];
}

/**
 * Every image of the chosen sets, in Unicode's emoji order (each base emoji, then its skin tones),
 * set by set. Throws where a package is missing or its metadata is not the layout known here.
 */
export async function readEmojiCatalogue(options: EmojiCatalogueOptions = {}): Promise<EmojiCatalogue> {
  const sets = options.sets ?? EMOJI_SETS;
  if (sets.length === 0)
    throw new DatasetError("No emoji set chosen: pass sets: ['google'], ['twitter'] or both", 'EMOJI_NO_SET');
  const sources = options.sources ?? resolveEmojiSources(sets);
  const wanted = options.unified === undefined ? undefined : new Set(options.unified.map(hexcodeKey));
  const emojibase = await readEmojibase(join(sources.emojibaseDir, 'en', 'data.json'));
  const records: EmojiRecord[] = [];
  const categories = new Set<string>();
  const subcategories = new Set<string>();
  for (const set of sets) {
    const file = join(packageDir(sources, set), 'emoji.json');
    const entries = (await readDatasource(file, set)).sort((a, b) => a.sortOrder - b.sortOrder);
    const imageDir = emojiImageDir(sources, set);
    for (const entry of entries) {
      categories.add(entry.category);
      subcategories.add(entry.subcategory);
      if (wanted !== undefined && !wanted.has(hexcodeKey(entry.unified))) continue;
      const known = emojibase.get(hexcodeKey(entry.unified));
      // Unknown to emojibase only when the two packages' Unicode versions differ: the Unicode name then.
      const name = known?.label ?? entry.unicodeName.toLowerCase();
      const base = {
        set,
        baseUnified: entry.unified,
        name,
        shortNames: entry.shortNames,
        keywords: known?.tags ?? [],
        category: entry.category,
        subcategory: entry.subcategory,
        sortOrder: entry.sortOrder,
      };
      if (entry.hasImage) {
        records.push({
          ...base,
          unified: entry.unified,
          imagePath: join(imageDir, entry.image),
          skinTones: [],
        });
      }
      if (options.skinTones === 'none') continue;
      for (const [tones, variation] of entry.skinVariations) {
        if (!variation.hasImage) continue;
        const skinTones = tones.split('-').map((modifier) => {
          const toneName = SKIN_TONE_NAMES[modifier.toUpperCase()];
          if (toneName === undefined) {
            throw new DatasetError(
              `${file}: ${entry.unified} has a skin variation '${tones}' that is not made of the skin-tone ` +
                'modifiers 1F3FB–1F3FF; the package is not the emoji-datasource layout this reader knows.',
              'EMOJI_METADATA_INVALID',
              file,
            );
          }
          return toneName;
        });
        records.push({
          ...base,
          unified: variation.unified,
          imagePath: join(imageDir, variation.image),
          skinTones,
        });
      }
    }
  }
  if (wanted !== undefined) {
    const found = new Set(records.map((r) => hexcodeKey(r.baseUnified)));
    const missing = [...wanted].filter((u) => !found.has(u));
    if (missing.length > 0) {
      throw new DatasetError(
        `No emoji with unified code ${missing.map((u) => `'${u}'`).join(', ')} in ${sets.map((s) => EMOJI_PACKAGE[s]).join(' / ')}. ` +
          `Give code points in hexadecimal joined by '-', as emoji-datasource's "unified" field (e.g. '2764-FE0F' for red heart).`,
        'EMOJI_NOT_FOUND',
      );
    }
  }
  return { records, categories: [...categories], subcategories: [...subcategories] };
}
