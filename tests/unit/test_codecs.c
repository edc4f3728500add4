/* Codec basics against values worked out by hand from NVFP4.md. */
#include "tests/harness.h"
#include "kernels/mq_kernels.h"

#include <math.h>

static void test_e2m1_thresholds(void)
{
    static const struct {
        float v;
        uint8_t c;
    } cases[] = {
        { 0.0f, 0 },   { 0.25f, 0 }, { 0.2501f, 1 }, { 0.75f, 2 }, { 1.25f, 2 }, { 1.2501f, 3 },
        { 1.75f, 4 },  { 2.5f, 4 },  { 2.51f, 5 },   { 3.5f, 6 },  { 5.0f, 6 },  { 5.01f, 7 },
        { 100.0f, 7 }, { -0.5f, 9 }, { -6.0f, 15 },  { -0.1f, 8 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(mq_f32_to_e2m1(cases[i].v) == cases[i].c, "e2m1(%g) = %d, want %d", cases[i].v,
              mq_f32_to_e2m1(cases[i].v), cases[i].c);
}

static void test_e4m3_roundtrip(void)
{
    /* every finite code decodes and re-encodes to itself */
    for (int b = 0; b < 256; b++) {
        if ((b & 0x7f) == 0x7f)
            continue;
        float v = mq_e4m3_to_f32((uint8_t)b);
        uint8_t back = mq_f32_to_e4m3(v);
        CHECK(back == b || (v == 0.0f && (back & 0x7f) == 0), "code %02x -> %g -> %02x", b, v, back);
    }
    CHECK(mq_f32_to_e4m3(1000.0f) == 0x7e, "saturates");
    CHECK(mq_e4m3_to_f32(0x7e) == 448.0f, "max 448");
    CHECK(mq_e4m3_to_f32(0x01) == 0x1p-9f, "smallest subnormal");
}

static void test_bf16_rne(void)
{
    CHECK(mq_f32_to_bf16(1.0f) == 0x3f80, "1.0");
    /* 1 + 2^-8 is a tie between 1.0 and 1+2^-7: even is 1.0 */
    CHECK(mq_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80, "tie to even");
    CHECK(mq_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 0x3f81, "above tie");
    CHECK(isnan(mq_bf16_to_f32(mq_f32_to_bf16(NAN))), "NaN stays NaN");
}

int main(void)
{
    mq_kernels_init();
    RUN(test_e2m1_thresholds);
    RUN(test_e4m3_roundtrip);
    RUN(test_bf16_rne);
    return harness_done();
}
