// What the words of eval's prompts alone tell about their category: a reference for the alignment
// figure of `velodiff eval`, whose prompts are the names of held-out emoji the model never saw.
//
//   node --import tsx scripts/alignment-text-reference.ts
//
// For each eval prompt (the prompt half of the held-out set, as eval draws it), the training emoji
// whose name (or, second row, any of whose captions) shares the largest share of the prompt's words
// vote, and the most common category among them is the guess. A model that learned exactly that much
// from the words of its captions, and drew the guessed category perfectly, would score this
// alignment with a perfect classifier. Not part of the package.
import { loadEmojiDataset } from '../src/train/data/emoji-dataset.js';
import { heldOutSet } from '../src/train/eval/held-out.js';

/** Words of a caption without the style words every caption has. */
function words(caption: string): string[] {
  return caption
    .toLowerCase()
    .replace(/[:,!.]/g, ' ')
    .split(/\s+/)
    .filter((w) => w !== '' && !['noto', 'twemoji', 'style', 'emoji'].includes(w));
}

const dataset = await loadEmojiDataset();
const labelNames = dataset.labelNames;
if (labelNames === undefined) throw new Error('the emoji data set has no labels');
const prompts = heldOutSet(dataset).prompts;
const train = dataset.items.filter((_, i) => dataset.split[i] === 'train');
const categoryOf = (item: (typeof dataset.items)[number]): number => item.labels?.category ?? -1;

for (const [label, captionsOf] of [
  ['names', (item: (typeof train)[number]) => [item.captions[1]]],
  ['all captions', (item: (typeof train)[number]) => item.captions],
] as const) {
  const vocabulary = train.map((item) => new Set(captionsOf(item).flatMap(words)));
  const perCategory = labelNames.category.map(() => ({ prompts: 0, hits: 0 }));
  for (const p of prompts) {
    const query = new Set(words(dataset.items[p].captions[1]));
    let best = 0;
    const votes = new Map<number, number>();
    train.forEach((item, t) => {
      let shared = 0;
      for (const w of query) if (vocabulary[t].has(w)) shared++;
      const score = shared / query.size;
      if (score > best) {
        best = score;
        votes.clear();
      }
      if (score === best && score > 0) votes.set(categoryOf(item), (votes.get(categoryOf(item)) ?? 0) + 1);
    });
    let guess = -1;
    let most = 0;
    for (const [category, n] of votes) if (n > most) [guess, most] = [category, n];
    const truth = categoryOf(dataset.items[p]);
    perCategory[truth].prompts++;
    if (guess === truth) perCategory[truth].hits++;
  }
  const hits = perCategory.reduce((s, c) => s + c.hits, 0);
  console.log(
    `words shared with training ${label}: category guessed for ${hits} of ${prompts.length} prompts (${(hits / prompts.length).toFixed(3)})`,
  );
  console.log(
    '  ' +
      perCategory
        .map((c, k) => (c.prompts > 0 ? `${labelNames.category[k]} ${c.hits}/${c.prompts}` : ''))
        .filter((s) => s !== '')
        .join('; '),
  );
}
