/**
 * Builds the scheduler a diffusers `scheduler_config.json` names in `_class_name`, as diffusers'
 * `SchedulerMixin.from_config` / `from_pretrained` does for the classes velodiff implements.
 */
import { OptionError } from '../errors.js';
import { parsePythonJson, type SchedulerConfigInput } from './config.js';
import { DDIMScheduler } from './ddim.js';
import { DPMSolverMultistepScheduler } from './dpm-solver-multistep.js';
import { EulerAncestralDiscreteScheduler } from './euler-ancestral-discrete.js';
import { EulerDiscreteScheduler } from './euler-discrete.js';
import { FlashFlowMatchEulerDiscreteScheduler } from './flash-flow-match-euler-discrete.js';
import { FlowMatchEulerDiscreteScheduler } from './flow-match-euler-discrete.js';
import { LCMScheduler } from './lcm.js';

/** The scheduler classes, by their diffusers `_class_name`. */
export const SCHEDULER_CLASSES = {
  DDIMScheduler,
  EulerDiscreteScheduler,
  EulerAncestralDiscreteScheduler,
  DPMSolverMultistepScheduler,
  FlowMatchEulerDiscreteScheduler,
  FlashFlowMatchEulerDiscreteScheduler,
  LCMScheduler,
} as const;

/** Short names for the command line, e.g. `--scheduler dpm++`, to diffusers class names. */
export const SCHEDULER_NAMES: Readonly<Record<string, SchedulerClassName>> = {
  ddim: 'DDIMScheduler',
  euler: 'EulerDiscreteScheduler',
  'euler-ancestral': 'EulerAncestralDiscreteScheduler',
  'dpm++': 'DPMSolverMultistepScheduler',
  'flow-match': 'FlowMatchEulerDiscreteScheduler',
  lcm: 'LCMScheduler',
};

export type SchedulerClassName = keyof typeof SCHEDULER_CLASSES;
export type AnyScheduler = InstanceType<(typeof SCHEDULER_CLASSES)[SchedulerClassName]>;

function isSchedulerClassName(name: string): name is SchedulerClassName {
  return Object.hasOwn(SCHEDULER_CLASSES, name);
}

/**
 * The scheduler `config` describes: a parsed `scheduler_config.json` object, or its text (which may
 * hold Python's `Infinity` / `NaN` tokens, as diffusers writes them). `overrides` replace config keys,
 * like the keyword arguments of diffusers' `from_config`.
 */
export function schedulerFromConfig(
  config: SchedulerConfigInput | string,
  overrides: SchedulerConfigInput = {},
): AnyScheduler {
  let parsed: unknown = config;
  if (typeof config === 'string') {
    try {
      parsed = parsePythonJson(config);
    } catch (error) {
      throw new OptionError(`schedulerFromConfig: the config text is not JSON: ${(error as Error).message}.`);
    }
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new OptionError('schedulerFromConfig: expected a scheduler config object (scheduler_config.json).');
  }
  const merged: SchedulerConfigInput = { ...(parsed as SchedulerConfigInput), ...overrides };
  const className = merged['_class_name'];
  const supported = Object.keys(SCHEDULER_CLASSES).join(', ');
  if (typeof className !== 'string') {
    throw new OptionError(
      `schedulerFromConfig: the config has no "_class_name"; expected one of ${supported}.`,
    );
  }
  if (!isSchedulerClassName(className)) {
    throw new OptionError(
      `schedulerFromConfig: "_class_name" is "${className}", which velodiff does not implement; supported: ${supported}.`,
      'UNSUPPORTED_SCHEDULER',
    );
  }
  return new SCHEDULER_CLASSES[className](merged);
}
