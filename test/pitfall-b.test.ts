// The incremental pitfall rows, part b (see harness/pitfall-rows.ts for why there are two files).

import { registerPitfallRows } from './harness/pitfall-rows.js';

registerPitfallRows('b');
