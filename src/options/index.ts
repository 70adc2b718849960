export * from './types.js';
export * from './size.js';
export * from './qemuopts.js';
export * from './keyval.js';
export * from './json.js';
