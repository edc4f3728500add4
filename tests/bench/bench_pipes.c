/* tests/bench/bench_pipes.c — which AVX-512 instructions compete with vpdpbusd for
 * execution pipes on this CPU. This decides how fast the NVFP4 GEMM tile can be (see
 * the top of kernels/gemm_avx512.c).
 *
 *   build/bench_pipes
 *
 * Each line times a loop of 12 independent vpdpbusd chains (enough to cover the
 * instruction's latency, so alone they run at the VNNI throughput) plus 4 (or 8)
 * instructions of one other kind that do not depend on the chains. If the extra
 * instructions run on other pipes the time stays at the first line's; if they share
 * the VNNI pipes it grows by their pipe time. Written in assembly so the compiler can
 * neither drop nor merge anything. Thread CPU time, best of 5 (other programs share
 * the machine).
 */
#include "common/clock.h"
#include "kernels/mq_kernels.h"

#include <stdio.h>
#include <time.h>

#define ITERS 10000000L

static int buf[256] __attribute__((aligned(64)));

#define CLOBBERS                                                                                                    \
    "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",     \
        "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", \
        "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31"

/* zmm8..zmm19 are the chains; zmm0/zmm1 their inputs; zmm2/zmm3 inputs of the extras,
 * which write zmm24..zmm31. */
#define V12                                                                \
    "vpdpbusd %%zmm1,%%zmm0,%%zmm8\n\tvpdpbusd %%zmm1,%%zmm0,%%zmm9\n\t"   \
    "vpdpbusd %%zmm1,%%zmm0,%%zmm10\n\tvpdpbusd %%zmm1,%%zmm0,%%zmm11\n\t" \
    "vpdpbusd %%zmm1,%%zmm0,%%zmm12\n\tvpdpbusd %%zmm1,%%zmm0,%%zmm13\n\t" \
    "vpdpbusd %%zmm1,%%zmm0,%%zmm14\n\tvpdpbusd %%zmm1,%%zmm0,%%zmm15\n\t" \
    "vpdpbusd %%zmm1,%%zmm0,%%zmm16\n\tvpdpbusd %%zmm1,%%zmm0,%%zmm17\n\t" \
    "vpdpbusd %%zmm1,%%zmm0,%%zmm18\n\tvpdpbusd %%zmm1,%%zmm0,%%zmm19\n\t"
#define X4(op)                                                                                         \
    op " %%zmm2,%%zmm3,%%zmm24\n\t" op " %%zmm2,%%zmm3,%%zmm25\n\t" op " %%zmm2,%%zmm3,%%zmm26\n\t" op \
       " %%zmm2,%%zmm3,%%zmm27\n\t"
#define X4U(op) op " %%zmm2,%%zmm24\n\t" op " %%zmm2,%%zmm25\n\t" op " %%zmm2,%%zmm26\n\t" op " %%zmm2,%%zmm27\n\t"
#define X8(op)                                                                                         \
    X4(op)                                                                                             \
    op " %%zmm2,%%zmm3,%%zmm28\n\t" op " %%zmm2,%%zmm3,%%zmm29\n\t" op " %%zmm2,%%zmm3,%%zmm30\n\t" op \
       " %%zmm2,%%zmm3,%%zmm31\n\t"

#define CASE(name, nv, body)                                                                        \
    {                                                                                               \
        double best = 1e30;                                                                         \
        for (int rep = 0; rep < 5; rep++) {                                                         \
            double t0 = mq_thread_cpu_s();                                                          \
            for (long i = 0; i < ITERS; i++)                                                        \
                __asm__ volatile(body ::"r"(buf) : CLOBBERS);                                       \
            double t = mq_thread_cpu_s() - t0;                                                      \
            best = t < best ? t : best;                                                             \
        }                                                                                           \
        const double ns = best / ITERS * 1e9;                                                       \
        if (base == 0)                                                                              \
            base = ns;                                                                              \
        printf("  %-34s %6.3f ns  %+6.3f ns  %5.2f vpdpbusd/ns\n", name, ns, ns - base, (nv) / ns); \
    }

__attribute__((target("avx512f"))) static void run(void)
{
    double base = 0;
    printf("per iteration: 12 vpdpbusd + the extras named   time   extra  VNNI rate\n");
    __asm__ volatile("vpternlogd $0xff, %%zmm0, %%zmm0, %%zmm0\n\tvpabsb %%zmm0, %%zmm1\n\t"
                     "vmovaps %%zmm1, %%zmm2\n\tvmovaps %%zmm1, %%zmm3\n\t"
                     "movl $0xaaaaaaaa, %%eax\n\tkmovd %%eax, %%k1" ::
                         : "xmm0", "xmm1", "xmm2", "xmm3", "eax", "k1");
    CASE("(none)", 12, V12)
    CASE("+4 vpbroadcastd m32 +3 zmm loads", 12,
         V12 "vpbroadcastd (%0),%%zmm24\n\tvpbroadcastd 4(%0),%%zmm25\n\t"
             "vpbroadcastd 8(%0),%%zmm26\n\tvpbroadcastd 12(%0),%%zmm27\n\tvmovdqa64 64(%0),%%zmm28\n\t"
             "vmovdqa64 128(%0),%%zmm29\n\tvmovdqa64 192(%0),%%zmm30\n\t")
    CASE("+8 vmovdqa64 reg", 12,
         V12 "vmovdqa64 %%zmm2,%%zmm24\n\tvmovdqa64 %%zmm2,%%zmm25\n\t"
             "vmovdqa64 %%zmm2,%%zmm26\n\tvmovdqa64 %%zmm2,%%zmm27\n\tvmovdqa64 %%zmm3,%%zmm28\n\t"
             "vmovdqa64 %%zmm3,%%zmm29\n\tvmovdqa64 %%zmm3,%%zmm30\n\tvmovdqa64 %%zmm3,%%zmm31\n\t")
    CASE("+4 vcvtdq2ps", 12, V12 X4U("vcvtdq2ps"))
    CASE("+4 vcvtph2ps", 12,
         V12 "vcvtph2ps %%ymm2,%%zmm24\n\tvcvtph2ps %%ymm2,%%zmm25\n\t"
             "vcvtph2ps %%ymm2,%%zmm26\n\tvcvtph2ps %%ymm2,%%zmm27\n\t")
    CASE("+8 vaddps", 12, V12 X8("vaddps"))
    CASE("+8 vpaddd", 12, V12 X8("vpaddd"))
    CASE("+4 vscalefps", 12, V12 X4("vscalefps"))
    CASE("+4 vgetexpps", 12, V12 X4U("vgetexpps"))
    CASE("+4 vpshufd", 12,
         V12 "vpshufd $0,%%zmm2,%%zmm24\n\tvpshufd $0x55,%%zmm2,%%zmm25\n\t"
             "vpshufd $0xaa,%%zmm2,%%zmm26\n\tvpshufd $0xff,%%zmm2,%%zmm27\n\t")
    CASE("+4 vpermps", 12, V12 X4("vpermps"))
    CASE("+4 vpshufb", 12, V12 X4("vpshufb"))
    CASE("+4 vpermb", 12, V12 X4("vpermb"))
    CASE("+4 vpermw", 12, V12 X4("vpermw"))
    CASE("+4 vpunpcklwd", 12, V12 X4("vpunpcklwd"))
    CASE("+8 vpandd", 12, V12 X8("vpandd"))
    CASE("+4 vpslld $16", 12,
         V12 "vpslld $16,%%zmm2,%%zmm24\n\tvpslld $16,%%zmm2,%%zmm25\n\t"
             "vpslld $16,%%zmm2,%%zmm26\n\tvpslld $16,%%zmm2,%%zmm27\n\t")
    CASE("+4 vpsrlw $4", 12,
         V12 "vpsrlw $4,%%zmm2,%%zmm24\n\tvpsrlw $4,%%zmm2,%%zmm25\n\t"
             "vpsrlw $4,%%zmm2,%%zmm26\n\tvpsrlw $4,%%zmm2,%%zmm27\n\t")
    CASE("+4 vpmovzxwd", 12,
         V12 "vpmovzxwd %%ymm2,%%zmm24\n\tvpmovzxwd %%ymm2,%%zmm25\n\t"
             "vpmovzxwd %%ymm2,%%zmm26\n\tvpmovzxwd %%ymm2,%%zmm27\n\t")
    CASE("+4 vpmovzxwd m256", 12,
         V12 "vpmovzxwd (%0),%%zmm24\n\tvpmovzxwd 32(%0),%%zmm25\n\t"
             "vpmovzxwd 64(%0),%%zmm26\n\tvpmovzxwd 96(%0),%%zmm27\n\t")
    CASE("+4 vpmovzxbw", 12,
         V12 "vpmovzxbw %%ymm2,%%zmm24\n\tvpmovzxbw %%ymm2,%%zmm25\n\t"
             "vpmovzxbw %%ymm2,%%zmm26\n\tvpmovzxbw %%ymm2,%%zmm27\n\t")
    CASE("+4 vpbroadcastd xmm", 12,
         V12 "vpbroadcastd %%xmm2,%%zmm24\n\tvpbroadcastd %%xmm2,%%zmm25\n\t"
             "vpbroadcastd %%xmm2,%%zmm26\n\tvpbroadcastd %%xmm2,%%zmm27\n\t")
    CASE("+4 vmovdqu16 m512 {k}{z} (odd words)", 12,
         V12 "vmovdqu16 (%0),%%zmm24%{%%k1%}%{z%}\n\tvmovdqu16 62(%0),%%zmm25%{%%k1%}%{z%}\n\t"
             "vmovdqu16 128(%0),%%zmm26%{%%k1%}%{z%}\n\tvmovdqu16 190(%0),%%zmm27%{%%k1%}%{z%}\n\t")
    CASE("+4 vscalefps m32bcst", 12,
         V12 "vscalefps (%0)%{1to16%},%%zmm2,%%zmm24\n\tvscalefps 4(%0)%{1to16%},%%zmm2,%%zmm25\n\t"
             "vscalefps 8(%0)%{1to16%},%%zmm2,%%zmm26\n\tvscalefps 12(%0)%{1to16%},%%zmm2,%%zmm27\n\t")
    CASE("+4 vpsllvd", 12, V12 X4("vpsllvd"))
    CASE("+4 vprold $16", 12,
         V12 "vprold $16,%%zmm2,%%zmm24\n\tvprold $16,%%zmm2,%%zmm25\n\t"
             "vprold $16,%%zmm2,%%zmm26\n\tvprold $16,%%zmm2,%%zmm27\n\t")
    CASE("+4 vbroadcasti32x4 m128", 12,
         V12 "vbroadcasti32x4 (%0),%%zmm24\n\tvbroadcasti32x4 16(%0),%%zmm25\n\t"
             "vbroadcasti32x4 32(%0),%%zmm26\n\tvbroadcasti32x4 48(%0),%%zmm27\n\t")
    CASE("+4 vbroadcastf32x8 m256", 12,
         V12 "vbroadcastf32x8 (%0),%%zmm24\n\tvbroadcastf32x8 32(%0),%%zmm25\n\t"
             "vbroadcastf32x8 64(%0),%%zmm26\n\tvbroadcastf32x8 96(%0),%%zmm27\n\t")
    CASE("+4 vblendmps {k}", 12,
         V12 "vblendmps %%zmm2,%%zmm3,%%zmm24%{%%k1%}\n\tvblendmps %%zmm2,%%zmm3,%%zmm25%{%%k1%}\n\t"
             "vblendmps %%zmm2,%%zmm3,%%zmm26%{%%k1%}\n\tvblendmps %%zmm2,%%zmm3,%%zmm27%{%%k1%}\n\t")
    CASE("+4 vpdpbusd m32bcst", 16,
         V12 "vpdpbusd (%0)%{1to16%},%%zmm2,%%zmm24\n\tvpdpbusd 4(%0)%{1to16%},%%zmm2,%%zmm25\n\t"
             "vpdpbusd 8(%0)%{1to16%},%%zmm2,%%zmm26\n\tvpdpbusd 12(%0)%{1to16%},%%zmm2,%%zmm27\n\t")
    CASE("+4 vmulps", 12, V12 X4("vmulps"))
    CASE("+4 vfmadd231ps", 12, V12 X4("vfmadd231ps"))
    CASE("+4 vpmulld", 12, V12 X4("vpmulld"))
    CASE("+4 vdpbf16ps", 12, V12 X4("vdpbf16ps"))
    CASE("1 chain of 4 (latency of 4)", 4,
         "vpdpbusd %%zmm1,%%zmm0,%%zmm8\n\tvpdpbusd %%zmm1,%%zmm0,%%zmm8\n\t"
         "vpdpbusd %%zmm1,%%zmm0,%%zmm8\n\tvpdpbusd %%zmm1,%%zmm0,%%zmm8\n\t")
}

int main(void)
{
    mq_kernels_init();
    if (!mq_kernels_cpu_has(MQ_ISA_AVX512)) {
        fprintf(stderr, "bench_pipes: this CPU has no AVX-512 VNNI/BF16\n");
        return 1;
    }
    run();
    return 0;
}
