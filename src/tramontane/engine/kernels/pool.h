/* A small thread pool for the engine's CPU kernels.
 *
 * Work is split into chunks that threads claim from a shared counter, so a
 * worker that the OS has descheduled (another process, the server's event loop)
 * never holds up the caller: the caller claims the chunks nobody took and waits
 * only for chunks already in progress. Workers spin for a short while after a
 * job, because during a decode step the next kernel follows within microseconds
 * and waking a sleeping thread on a virtual CPU costs tens of them; then they
 * sleep on a futex, so an idle engine uses no CPU.
 */
#ifndef TRAMONTANE_POOL_H
#define TRAMONTANE_POOL_H

typedef void (*pool_chunk_fn)(void *ctx, int chunk);

/* Starts `threads - 1` workers (the caller is the last thread). Returns 0 on success. */
int pool_start(int threads);
int pool_threads(void);

/* Runs fn(ctx, c) for every c in [0, chunks) and returns once all have run. Jobs
 * from several calling threads are serialised. */
void pool_run(pool_chunk_fn fn, void *ctx, int chunks);

#endif
