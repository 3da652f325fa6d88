#!/usr/bin/env -S MALLOC_TRIM_THRESHOLD_=134217728 node
// MALLOC_TRIM_THRESHOLD_: every AES-GCM call (node:crypto's update) returns its output in freshly malloc'ed memory;
// V8 frees those buffers tens of MiB at a time, and glibc's default (give back whatever free memory above 128 KiB
// tops the heap) returns them to the kernel, so the next calls fault every page in again: an encrypted restore
// spent a third of its time on page faults. Keeping up to 128 MiB of freed heap removes them (see README).
import '../dist/src/cli/bart.js';
