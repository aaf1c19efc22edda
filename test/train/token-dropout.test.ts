/**
 * Word dropout on tokenized captions: the tokens whose draw falls below p go, the rest close up in
 * order, `</s>` always stays, a caption keeps at least one word, and an empty caption is untouched.
 * Expected rows are written out by hand.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { dropTokens } from '../../src/train/token-dropout.js';

// "dog face , noto style </s>" and the empty caption "</s>", padded to 8.
const rows = {
  inputIds: [
    [384, 26, 3, 7, 4, 1, 0, 0],
    [1, 0, 0, 0, 0, 0, 0, 0],
  ],
  attentionMask: [
    [1, 1, 1, 1, 1, 1, 0, 0],
    [1, 0, 0, 0, 0, 0, 0, 0],
  ],
};

describe('caption word dropout', () => {
  it('deletes the tokens drawn below p and closes up; </s> and padding stay', () => {
    // Row 0 drops "face" (0.1) and "noto" (0.2); the draw under </s> (0.0) does not count.
    const u = [0.9, 0.1, 0.5, 0.2, 0.7, 0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0, 0, 0, 0];
    const out = dropTokens(rows, u, 0.3);
    assert.deepEqual(out.inputIds, [
      [384, 3, 4, 1, 0, 0, 0, 0],
      [1, 0, 0, 0, 0, 0, 0, 0],
    ]);
    assert.deepEqual(out.attentionMask, [
      [1, 1, 1, 1, 0, 0, 0, 0],
      [1, 0, 0, 0, 0, 0, 0, 0],
    ]);
  });

  it('keeps the word with the highest draw when every word would go', () => {
    const u = [0.1, 0.25, 0.05, 0.2, 0.15, 0.9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    const out = dropTokens(rows, u, 0.3);
    assert.deepEqual(out.inputIds[0], [26, 1, 0, 0, 0, 0, 0, 0]);
    assert.deepEqual(out.attentionMask[0], [1, 1, 0, 0, 0, 0, 0, 0]);
  });

  it('p = 0 changes nothing', () => {
    const u = new Array(16).fill(0);
    assert.deepEqual(dropTokens(rows, u, 0), rows);
  });
});
