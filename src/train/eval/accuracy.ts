/**
 * Classifier accuracy: how often a head's most likely class is the image's label. Used for the
 * classifier's own validation, for prompt alignment of generated images and for the real ceiling.
 */
import { OptionError } from '../../errors.js';
import type { EmojiClassifierHead } from '../../models/emoji-classifier.js';

/** The index of the largest logit of each row of a [count, classes] matrix (the first one on a tie). */
export function argmaxRows(logits: Float32Array, classes: number): Int32Array {
  const count = logits.length / classes;
  if (!Number.isInteger(count)) {
    throw new OptionError(`argmaxRows: ${logits.length} logits are not rows of ${classes}`, 'ACCURACY_SHAPE');
  }
  const out = new Int32Array(count);
  for (let r = 0; r < count; r++) {
    let best = 0;
    for (let k = 1; k < classes; k++) if (logits[r * classes + k] > logits[r * classes + best]) best = k;
    out[r] = best;
  }
  return out;
}

/** Share of rows whose argmax is the label. */
export function accuracy(logits: Float32Array, classes: number, labels: Int32Array): number {
  const predicted = argmaxRows(logits, classes);
  if (predicted.length !== labels.length) {
    throw new OptionError(
      `accuracy: ${predicted.length} rows of logits but ${labels.length} labels`,
      'ACCURACY_SHAPE',
    );
  }
  if (labels.length === 0) return Number.NaN;
  let hits = 0;
  for (let i = 0; i < labels.length; i++) if (predicted[i] === labels[i]) hits++;
  return hits / labels.length;
}

/** Per label class (index into the head's classes): how many rows carry it and how many of them the argmax gets right. */
export function accuracyByClass(
  logits: Float32Array,
  classes: number,
  labels: Int32Array,
): Map<number, { count: number; hits: number }> {
  const predicted = argmaxRows(logits, classes);
  if (predicted.length !== labels.length) {
    throw new OptionError(
      `accuracyByClass: ${predicted.length} rows of logits but ${labels.length} labels`,
      'ACCURACY_SHAPE',
    );
  }
  const byClass = new Map<number, { count: number; hits: number }>();
  labels.forEach((label, i) => {
    const entry = byClass.get(label) ?? { count: 0, hits: 0 };
    entry.count++;
    if (predicted[i] === label) entry.hits++;
    byClass.set(label, entry);
  });
  return byClass;
}

/**
 * For each class name of a data set's label, the index of that class in a classifier head — by name,
 * so a classifier trained on one version of the emoji packages reads another's labels correctly. A
 * name the head lacks is an error: the classifier cannot be scored on a class it never learned.
 */
export function headIndexOf(head: EmojiClassifierHead, datasetNames: readonly string[]): Int32Array {
  const position = new Map(head.classes.map((name, i) => [name, i]));
  const missing = datasetNames.filter((name) => !position.has(name));
  if (missing.length > 0) {
    throw new OptionError(
      `the classifier's "${head.label}" head has no class ${missing.map((m) => `'${m}'`).join(', ')} of the ` +
        `data set (it knows ${head.classes.length}); retrain the classifier on this data`,
      'CLASSIFIER_LABELS',
    );
  }
  return Int32Array.from(datasetNames, (name) => position.get(name) as number);
}
