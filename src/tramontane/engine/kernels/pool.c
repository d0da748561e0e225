#include "pool.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

/* How long an idle worker spins before it sleeps. Long enough to bridge the
 * Python between two kernels of a step (tens of microseconds), short enough
 * that an engine between steps gives its cores back at once. While spinning it
 * yields, so it takes a core only when nothing else wants it. */
#define SPIN_NS 200000

#define MAX_THREADS 256
#define CLOSED 0xFFFFFFFFu

/* The job's generation (high 32 bits) and its next unclaimed chunk (low 32):
 * one word, so that a claim can only succeed on the job it was meant for. */
static _Atomic uint64_t claim_word;
static _Atomic int chunks_done;
static _Atomic int sleepers;
/* The latest job's generation, the word sleeping workers wait on. */
static _Atomic uint32_t posted;
static _Atomic(pool_chunk_fn) job_fn;
static _Atomic(void *) job_ctx;
static _Atomic int job_chunks;
static uint32_t generation;
static int n_threads = 1;

static pthread_mutex_t submit_lock = PTHREAD_MUTEX_INITIALIZER;

/* Sleeping is a futex on `posted` rather than a condition variable: glibc 2.36's
 * (Debian 12) can lose a broadcast (glibc bug 25847), which left the engine's
 * caller and a worker both waiting for good in a decode step here. The kernel
 * sleeps a thread only while `posted` still holds the value it saw. */
static void sleep_while_posted_is(uint32_t seen) {
    syscall(SYS_futex, &posted, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
}

static void wake_sleepers(void) { syscall(SYS_futex, &posted, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0); }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Claims and runs chunks of generation `gen` until none is left. */
static void work_on(uint32_t gen) {
    for (;;) {
        uint64_t word = atomic_load_explicit(&claim_word, memory_order_acquire);
        if ((uint32_t)(word >> 32) != gen) return;
        uint32_t chunk = (uint32_t)word;
        pool_chunk_fn fn = atomic_load_explicit(&job_fn, memory_order_relaxed);
        void *ctx = atomic_load_explicit(&job_ctx, memory_order_relaxed);
        int chunks = atomic_load_explicit(&job_chunks, memory_order_relaxed);
        if (chunk >= (uint32_t)chunks) return; /* also true once the job is CLOSED */
        if (!atomic_compare_exchange_weak_explicit(&claim_word, &word, word + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        /* The claim succeeded while the job was open, so fn/ctx/chunks were its own:
         * the caller rewrites them only after closing it, which needs this chunk done. */
        fn(ctx, (int)chunk);
        atomic_fetch_add_explicit(&chunks_done, 1, memory_order_release);
    }
}

static void *worker_main(void *arg) {
    (void)arg;
    uint32_t seen = 0;
    for (;;) {
        uint32_t gen = (uint32_t)(atomic_load_explicit(&claim_word, memory_order_acquire) >> 32);
        if (gen == seen) {
            uint64_t deadline = now_ns() + SPIN_NS;
            unsigned spins = 0;
            while ((gen = (uint32_t)(atomic_load_explicit(&claim_word, memory_order_acquire) >> 32)) == seen) {
                cpu_relax();
                if ((++spins & 63) == 0) {
                    if (now_ns() > deadline) break;
                    /* Hand the core to whatever else wants it (the server's event loop,
                     * the caller itself, another process): a spinning thread that
                     * keeps it would slow everything on a busy machine. */
                    sched_yield();
                }
            }
        }
        if (gen == seen) {
            /* seq_cst, with the caller's store of `posted` then load of `sleepers`: either
             * it sees this sleeper and wakes it, or this thread sees its job. */
            atomic_fetch_add(&sleepers, 1);
            while ((gen = atomic_load(&posted)) == seen) sleep_while_posted_is(seen);
            atomic_fetch_sub(&sleepers, 1);
        }
        seen = gen;
        work_on(gen);
    }
    return NULL;
}

int pool_start(int threads) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    n_threads = 1;
    for (int i = 1; i < threads; i++) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int err = pthread_create(&thread, &attr, worker_main, NULL);
        pthread_attr_destroy(&attr);
        if (err) return err;
        n_threads++;
    }
    return 0;
}

int pool_threads(void) { return n_threads; }

void pool_run(pool_chunk_fn fn, void *ctx, int chunks) {
    if (chunks <= 0) return;
    if (n_threads == 1 || chunks == 1) {
        for (int c = 0; c < chunks; c++) fn(ctx, c);
        return;
    }
    pthread_mutex_lock(&submit_lock);
    uint32_t gen = ++generation;
    if (gen == 0) gen = ++generation; /* workers start having "seen" generation 0 */
    atomic_store_explicit(&job_fn, fn, memory_order_relaxed);
    atomic_store_explicit(&job_ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&job_chunks, chunks, memory_order_relaxed);
    atomic_store_explicit(&chunks_done, 0, memory_order_relaxed);
    atomic_store(&claim_word, (uint64_t)gen << 32);
    atomic_store(&posted, gen); /* seq_cst: pairs with the sleepers count */
    if (atomic_load(&sleepers) > 0) wake_sleepers();
    work_on(gen);
    while (atomic_load_explicit(&chunks_done, memory_order_acquire) < chunks) cpu_relax();
    atomic_store_explicit(&claim_word, ((uint64_t)gen << 32) | CLOSED, memory_order_release);
    pthread_mutex_unlock(&submit_lock);
}
