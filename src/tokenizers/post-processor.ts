/** The special tokens a tokenizer.json's post-processor puts around one sequence. */
import { FileFormatError } from '../errors.js';
import { describeJson } from '../io/json.js';
import type { TemplateItem, TemplateProcessingJson, TokenizerJson } from './tokenizer-json.js';

/**
 * The special token ids the post-processor puts around sequence A: RobertaProcessing's cls and sep
 * (transformers' CLIP converter), a TemplateProcessing `single` template, or none.
 */
export function postProcessorSpecialIds(
  json: TokenizerJson,
  path: string,
): { prefix: number[]; suffix: number[] } {
  const post = json.post_processor;
  const fail = (what: string): never => {
    throw new FileFormatError(`${path}: ${what}`, 'TOKENIZER_INVALID', path);
  };
  if (post === null || post.type === 'ByteLevel') return { prefix: [], suffix: [] };
  if (post.type === 'RobertaProcessing' || post.type === 'BertProcessing') {
    const idOf = (key: 'cls' | 'sep'): number => {
      const pair = (post as Record<string, unknown>)[key];
      return Array.isArray(pair) && typeof pair[1] === 'number'
        ? pair[1]
        : fail(`post_processor "${key}" is ${describeJson(pair)}; expected [token, id]`);
    };
    return { prefix: [idOf('cls')], suffix: [idOf('sep')] };
  }
  if (post.type !== 'TemplateProcessing') {
    return fail(
      `post_processor type ${describeJson(post.type)} is not supported; expected RobertaProcessing (as transformers writes for CLIP) or TemplateProcessing`,
    );
  }
  const template = post as TemplateProcessingJson;
  const prefix: number[] = [];
  const suffix: number[] = [];
  let seenSequence = false;
  for (const item of template.single as TemplateItem[]) {
    if ('Sequence' in item) {
      seenSequence = true;
      continue;
    }
    const special = template.special_tokens?.[item.SpecialToken.id];
    if (!special || !Array.isArray(special.ids)) {
      return fail(
        `post_processor template uses ${describeJson(item.SpecialToken.id)}, which its special_tokens does not list`,
      );
    }
    (seenSequence ? suffix : prefix).push(...special.ids);
  }
  return { prefix, suffix };
}
