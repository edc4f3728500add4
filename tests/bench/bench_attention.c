/* bench_attention — causal attention speed at Qwen3-1.7B head shapes (16 q-heads,
 * 8 kv-heads, head_dim 128), one thread, every ISA this CPU has.
 *
 *   build/bench_attention [n_ctx [isa [chunk]]]   (default 8192, every ISA, 256)
 *
 * Prints, per ISA: prefill of an n_ctx-token prompt through one layer's attention
 * (processed as the engine does, in chunks of `chunk` tokens at growing pos0: 256 is
 * mqd's default chunk_tokens; the scalar and AVX2 paths time the last chunk only and
 * scale by the causal work ratio), and one decode step at position n_ctx. Times are the
 * thread's CPU time. The closing lines are single numbers for scripts:
 *   attn_prefill_tok_s_<isa>: tokens/s of one layer's attention over the whole prompt
 */
#include "common/clock.h"
#include "kernels/mq_kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

/* Times are thread CPU time (mq_thread_cpu_s): other programs share the 2 cores, and it
 * counts only our own cycles (caches and memory bandwidth are still shared). */

int main(int argc, char **argv)
{
    const int n_ctx = argc > 1 ? atoi(argv[1]) : 8192;
    const int n_head = 16, n_kv = 8, hd = 128, bt = 64, chunk = argc > 3 && atoi(argv[3]) > 0 ? atoi(argv[3]) : 256;
    const int nblk = (n_ctx + 1 + bt - 1) / bt;
    uint16_t **kb = malloc(sizeof *kb * nblk), **vb = malloc(sizeof *vb * nblk);
    unsigned long long s = 88172645463325252ULL;
    /* one hugepage-backed segment cut into blocks, as the daemon's KV store */
    const size_t per = (size_t)bt * n_kv * hd,
                 seg_bytes = ((per * 2 * 2 * nblk) + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
    uint16_t *seg = aligned_alloc(2u << 20, seg_bytes);
    madvise(seg, seg_bytes, MADV_HUGEPAGE);
    for (int b = 0; b < nblk; b++) {
        kb[b] = seg + (size_t)(2 * b) * per;
        vb[b] = seg + (size_t)(2 * b + 1) * per;
        for (size_t i = 0; i < per; i++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            kb[b][i] = mq_f32_to_bf16((float)((s >> 40) & 0xffff) / 65536.0f - 0.5f);
            vb[b][i] = mq_f32_to_bf16((float)((s >> 20) & 0xffff) / 65536.0f - 0.5f);
        }
    }
    const size_t qn = (size_t)chunk * n_head * hd;
    float *q = malloc(sizeof(float) * qn), *out = malloc(sizeof(float) * qn);
    for (size_t i = 0; i < qn; i++)
        q[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
    mq_attn_args a = { .q = q,
                       .out = out,
                       .n_head = n_head,
                       .n_kv = n_kv,
                       .head_dim = hd,
                       .k_blocks = (const uint16_t *const *)kb,
                       .v_blocks = (const uint16_t *const *)vb,
                       .block_tokens = bt,
                       .scale = 1.0f / sqrtf((float)hd) };
    double tok_s[3] = { 0 };
    printf("attention, Qwen3-1.7B heads (%d q, %d kv, head_dim %d), %d-token prompt in %d-token chunks, 1 thread\n",
           n_head, n_kv, hd, n_ctx, chunk);
    printf("%-8s %12s %12s %10s %12s %12s\n", "isa", "prefill s", "tokens/s", "G MAC/s", "decode ms", "decode GB/s");
    for (int isa = MQ_ISA_SCALAR; isa <= MQ_ISA_AVX512; isa++) {
        if (argc > 2 && strcmp(argv[2], mq_isa_name((mq_isa)isa)))
            continue;
        if (mq_kernels_force((mq_isa)isa))
            continue;
        double t = 0;
        const int full = isa == MQ_ISA_AVX512;
        /* the slow paths time 32 tokens of the last chunk and scale by causal work */
        const int last = ((n_ctx - 1) / chunk) * chunk;
        double work_all = 0, work_done = 0; /* key-query pairs */
        for (int p0 = 0; p0 < n_ctx; p0 += chunk) {
            int n = n_ctx - p0 < chunk ? n_ctx - p0 : chunk;
            work_all += (double)n * p0 + (double)n * (n + 1) / 2;
            if (!full && p0 != last)
                continue;
            if (!full && n > 32)
                n = 32;
            work_done += (double)n * p0 + (double)n * (n + 1) / 2;
            a.pos0 = p0;
            a.n_tok = n;
            double t0 = mq_thread_cpu_s();
            mq_attention(&a, 0, n_head);
            t += mq_thread_cpu_s() - t0;
        }
        double total = t * work_all / work_done;
        a.pos0 = n_ctx;
        a.n_tok = 1;
        double best = 1e9;
        for (int r = 0; r < 5; r++) {
            double t0 = mq_thread_cpu_s();
            mq_attention(&a, 0, n_head);
            double d = mq_thread_cpu_s() - t0;
            best = d < best ? d : best;
        }
        double kv_bytes = 2.0 * (n_ctx + 1) * n_kv * hd * 2;
        tok_s[isa] = n_ctx / total;
        const double macs = work_all * n_head * hd * 2; /* QKᵀ and PV */
        printf("%-8s %12.3f %12.1f %10.1f %12.3f %12.2f%s\n", mq_isa_name((mq_isa)isa), total, tok_s[isa],
               macs / total / 1e9, best * 1e3, kv_bytes / best / 1e9,
               full ? "" : "   (prefill scaled from the last chunk)");
    }
    for (int isa = MQ_ISA_SCALAR; isa <= MQ_ISA_AVX512; isa++)
        if (tok_s[isa] > 0)
            printf("attn_prefill_tok_s_%s: %.1f\n", mq_isa_name((mq_isa)isa), tok_s[isa]);
    free(seg);
    free(kb);
    free(vb);
    free(q);
    free(out);
    return 0;
}
