/**
 * Captions of emoji images. The name always comes first, so that a short prompt ("red heart") is the
 * start of every caption the model saw for that image; the set's style ("noto style", "twemoji
 * style") follows, so a user can ask for either or leave it out. Each image gets several variants
 * (more words, fewer words) and the loader picks one per draw, by seed.
 */
import { EMOJI_STYLE, type EmojiRecord } from './emoji.js';

/** Bumped whenever the variants below change: it is part of the data cache's key. */
export const CAPTION_FORMAT_VERSION = 1;

/** Keywords per caption at most: CLDR lists up to ~12, and a prompt is short. */
const MAX_KEYWORDS = 6;

/** 'Santa Claus, medium-dark skin tone': the name with its skin tones, as CLDR names variants (comma, not colon). */
export function emojiDisplayName(record: EmojiRecord): string {
  return [record.name, ...record.skinTones].join(', ');
}

/** 'People & Body' → 'people & body'; 'person-fantasy' → 'person fantasy'. */
function words(label: string): string {
  return label.toLowerCase().replace(/[-_]/g, ' ');
}

/**
 * The caption variants of one image, without repeats, the canonical one first:
 *
 * 0. `<name>, <style> style` — "red heart, noto style" (eval prompts use this one)
 * 1. `<name>` — "red heart"
 * 2. `<name> emoji[, <skin tones>], <style> style` — "red heart emoji, noto style"
 * 3. `<name>, <style> style, <keywords>` — "red heart, noto style, emotion, heart, love, red"
 * 4. `<name>, <subcategory>, <category>, <style> style` — "red heart, heart, smileys & emotion, noto style"
 * 5. `<name>, <short names>, <style> style` — "Santa Claus, santa, noto style" (when they differ from the name)
 */
export function emojiCaptions(record: EmojiRecord): string[] {
  const name = emojiDisplayName(record);
  const style = `${EMOJI_STYLE[record.set]} style`;
  const lowerName = name.toLowerCase();
  const keywords = record.keywords.filter((k) => k.toLowerCase() !== lowerName).slice(0, MAX_KEYWORDS);
  const shortNames = record.shortNames.map(words).filter((s) => s !== lowerName && s !== words(record.name));
  const variants = [
    `${name}, ${style}`,
    name,
    [`${record.name} emoji`, ...record.skinTones, style].join(', '),
    keywords.length > 0 ? `${name}, ${style}, ${keywords.join(', ')}` : undefined,
    `${name}, ${words(record.subcategory)}, ${words(record.category)}, ${style}`,
    shortNames.length > 0 ? `${name}, ${shortNames.join(', ')}, ${style}` : undefined,
  ];
  return [...new Set(variants.filter((v): v is string => v !== undefined))];
}
