#!/usr/bin/env -S GLIBC_TUNABLES=glibc.malloc.hugetlb=1 MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=134217728 node
// glibc's malloc settings, for memory that is costly to touch anew (a page fault per 4 KiB; on a VM whose freed
// memory goes back to the host, several µs each). MALLOC_TRIM_THRESHOLD_: every AES-GCM call (node:crypto's update)
// returns its output in freshly malloc'ed memory; V8 frees those buffers tens of MiB at a time, and glibc's default
// gives free memory above 128 KiB at the top of the heap back to the kernel, so the next calls faulted every page in
// again (an encrypted restore spent a third of its time there). Setting it turns off glibc's adaptive mmap threshold,
// so MALLOC_MMAP_THRESHOLD_ keeps buffers up to 32 MiB (the gunzip stream's 256 KiB pieces) in the heap too, not in
// a fresh mapping each (a gzip restore took 1.5x the time with the first setting alone). glibc.malloc.hugetlb=1:
// malloc asks for transparent huge pages (madvise), so a large allocation faults in 2 MiB at a time — the 32 MiB
// scrypt of an encrypted repository's key took 106–290 ms instead of 298–468 ms (5 restores each); unencrypted
// BACKUP and RESTORE measured the same with and without it. See README, Benchmarks.
import '../dist/src/cli/bart.js';
