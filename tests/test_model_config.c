/* test_model_config: config.json of Llama-family models — defaults per model_type, errors
 * naming the file and key, legacy and rope_parameters RoPE keys (frequencies checked against
 * values printed by transformers), and writing (legacy keys, unknown keys kept). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "train/model.h"

/* ---------------------------------------------------------------- config.json */

static const char *temp_path(char *buf, size_t size, const char *name) {
    const char *dir = getenv("CTUNE_BUILD_DIR");
    snprintf(buf, size, "%s/test_model_%d_%s", dir ? dir : "/tmp", (int)getpid(), name);
    return buf;
}

static int load_text(model_config *c, const char *json, ct_error *err) {
    char path[1100];
    temp_path(path, sizeof path, "config.json");
    FILE *f = fopen(path, "wb");
    if (!f) return ct_fail(err, "cannot create %s", path);
    fputs(json, f);
    fclose(f);
    int status = model_config_load(c, path, err);
    remove(path);
    return status;
}

#define BASE "\"model_type\": \"llama\", \"vocab_size\": 10, \"intermediate_size\": 16, " \
             "\"num_hidden_layers\": 1, \"num_attention_heads\": 2"

static void expect_error(const char *json, const char *needle) {
    model_config c;
    ct_error err = {{0}};
    CHECK_MSG(load_text(&c, json, &err) == -1, "accepted: %s", json);
    CHECK_CONTAINS(err.msg, needle);
    CHECK_CONTAINS(err.msg, "config.json");
}

static void test_defaults(void) {
    model_config c;
    ct_error err;
    CHECK_MSG(load_text(&c, "{" BASE ", \"hidden_size\": 8}", &err) == 0, "%s", err.msg);
    CHECK(c.num_key_value_heads == 2 && c.head_dim == 4 && c.rms_norm_eps == 1e-6 &&
          c.rope_theta == 10000.0 && c.rope_scaling == ROPE_SCALING_NONE && !c.tie_word_embeddings &&
          c.initializer_range == 0.02 && c.bos_token_id == -1 && c.n_eos == 0 && c.pad_token_id == -1 &&
          !c.attention_bias && !c.o_proj_bias && !c.mlp_bias && !c.qk_norm);
    model_config_free(&c);
}

static void test_errors(void) {
    expect_error("{" BASE "}", "'hidden_size'");
    expect_error("{" BASE ", \"hidden_size\": -3}", "'hidden_size' must be a positive integer");
    expect_error("{" BASE ", \"hidden_size\": 8.5}", "'hidden_size' must be a positive integer");
    expect_error("{" BASE ", \"hidden_size\": \"8\"}", "'hidden_size' must be a positive integer");
    expect_error("{\"model_type\": \"gpt2\", \"hidden_size\": 8}", "'model_type' is 'gpt2'");
    expect_error("{\"hidden_size\": 8}", "'model_type'");
    expect_error("{" BASE ", \"hidden_size\": 8, \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 2.0}}",
                 "'rope_scaling.rope_type' is 'yarn'");
    expect_error("{" BASE ", \"hidden_size\": 8, \"rope_parameters\": {\"rope_type\": \"dynamic\"}}",
                 "'rope_parameters.rope_type' is 'dynamic'");
    expect_error("{" BASE ", \"hidden_size\": 8, \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
                 "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 64}}",
                 "'rope_scaling.low_freq_factor'");
    expect_error("{" BASE ", \"hidden_size\": 8, \"num_key_value_heads\": 3}", "'num_key_value_heads'");
    expect_error("{" BASE ", \"hidden_size\": 8, \"eos_token_id\": \"x\"}", "'eos_token_id'");
    expect_error("{" BASE ", \"hidden_size\": 8, \"hidden_act\": \"gelu\"}", "'hidden_act'");
    expect_error("{" BASE ", \"hidden_size\": 8, \"tie_word_embeddings\": 1}", "'tie_word_embeddings'");
    expect_error("{\"model_type\": \"llama\", \"vocab_size\": ", "byte");
    expect_error("[1, 2]", "object");
    expect_error("{\"model_type\": \"qwen2\", \"vocab_size\": 10, \"hidden_size\": 8, \"intermediate_size\": 16, "
                 "\"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"use_sliding_window\": true}",
                 "'use_sliding_window'");
}

static void test_families(void) {
    model_config c;
    ct_error err;
    CHECK(load_text(&c, "{" BASE ", \"hidden_size\": 8, \"eos_token_id\": [5, 7, 9], \"bos_token_id\": 4, "
                    "\"num_key_value_heads\": null, \"torch_dtype\": \"bfloat16\"}", &err) == 0);
    CHECK(c.n_eos == 3 && c.eos_token_ids[2] == 9 && c.bos_token_id == 4 && c.num_key_value_heads == 2 &&
          strcmp(c.torch_dtype, "bfloat16") == 0);
    model_config_free(&c);

    /* Per-family rules. */
    CHECK(load_text(&c, "{\"model_type\": \"qwen2\", \"vocab_size\": 10, \"hidden_size\": 8, "
                    "\"intermediate_size\": 16, \"num_hidden_layers\": 1, \"num_attention_heads\": 2, "
                    "\"num_key_value_heads\": 1}", &err) == 0);
    CHECK(c.attention_bias && !c.o_proj_bias && !c.qk_norm && c.head_dim == 4);
    model_config_free(&c);
    CHECK(load_text(&c, "{\"model_type\": \"qwen3\", \"vocab_size\": 10, \"hidden_size\": 8, "
                    "\"intermediate_size\": 16, \"num_hidden_layers\": 1, \"num_attention_heads\": 2, "
                    "\"num_key_value_heads\": 1, \"attention_bias\": true}", &err) == 0);
    CHECK(c.qk_norm && c.head_dim == 128 && c.attention_bias && c.o_proj_bias);
    model_config_free(&c);
    CHECK(load_text(&c, "{" BASE ", \"hidden_size\": 8, \"attention_bias\": true, \"mlp_bias\": true}", &err) == 0);
    CHECK(c.attention_bias && c.o_proj_bias && c.mlp_bias);
    model_config_free(&c);

}

static void test_rope(void) {
    model_config c;
    ct_error err;
    /* Legacy keys and rope_parameters give the same llama3 frequencies, as transformers
     * computes them (values printed by LlamaRotaryEmbedding, Llama 3.2 settings). */
    const char *legacy = "{\"model_type\": \"llama\", \"vocab_size\": 10, \"hidden_size\": 2048, "
                         "\"intermediate_size\": 16, \"num_hidden_layers\": 1, \"num_attention_heads\": 32, "
                         "\"head_dim\": 64, \"rope_theta\": 500000.0, \"rope_scaling\": {\"rope_type\": \"llama3\", "
                         "\"factor\": 32.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                         "\"original_max_position_embeddings\": 8192}}";
    const char *modern = "{\"model_type\": \"llama\", \"vocab_size\": 10, \"hidden_size\": 2048, "
                         "\"intermediate_size\": 16, \"num_hidden_layers\": 1, \"num_attention_heads\": 32, "
                         "\"head_dim\": 64, \"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": 500000.0, "
                         "\"factor\": 32.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                         "\"original_max_position_embeddings\": 8192}}";
    model_config c2;
    CHECK(load_text(&c, legacy, &err) == 0);
    CHECK(load_text(&c2, modern, &err) == 0);
    float f1[32], f2[32];
    model_rope_inv_freq(&c, f1);
    model_rope_inv_freq(&c2, f2);
    CHECK(memcmp(f1, f2, sizeof f1) == 0 && c.rope_theta == 500000.0 && c2.rope_factor == 32.0);
    const int js[] = {0, 5, 10, 15, 20, 25, 31};
    const double want[] = {1.0, 0.12868738174438477, 0.016560440883040428, 0.0012905480107292533,
                           8.570255886297673e-06, 1.1028836297555245e-06, 9.418306490260875e-08};
    for (int i = 0; i < 7; i++) CHECK_MSG(fabs(f1[js[i]] - want[i]) <= 2e-6 * want[i], "inv_freq[%d] %.9g", js[i], f1[js[i]]);
    model_config_free(&c);
    model_config_free(&c2);
}

static void test_write(void) {
    model_config c, c2;
    ct_error err;
    /* Write: legacy rope keys, unknown keys kept, reads back the same. */
    char src[1024], path[1100];
    check_source_path("tests/fixtures/model/llama_gqa/config.json", src, sizeof src);
    CHECK(model_config_load(&c, src, &err) == 0);
    temp_path(path, sizeof path, "written.json");
    CHECK_MSG(model_config_write(&c, path, &err) == 0, "%s", err.msg);
    CHECK(model_config_load(&c2, path, &err) == 0);
    CHECK(c2.rope_scaling == ROPE_SCALING_LLAMA3 && c2.rope_factor == 8.0 && c2.rms_norm_eps == 1e-5 &&
          c2.hidden_size == c.hidden_size && c2.num_key_value_heads == 2 && c2.n_eos == 1 &&
          c2.eos_token_ids[0] == 2 && c2.bos_token_id == 1 && !c2.tie_word_embeddings &&
          c2.rope_original_max_position_embeddings == 64);
    FILE *f = fopen(path, "rb");
    char text[8192] = {0};
    if (f) {
        size_t got = fread(text, 1, sizeof text - 1, f);
        text[got] = '\0';
        fclose(f);
    }
    CHECK_CONTAINS(text, "\"pretraining_tp\": 1");
    CHECK_CONTAINS(text, "\"rope_theta\": 10000.0");
    CHECK_CONTAINS(text, "\"rope_type\": \"llama3\"");
    CHECK_CONTAINS(text, "\"rms_norm_eps\": 1e-05");
    CHECK(strstr(text, "rope_parameters") == NULL);
    model_config_free(&c);
    model_config_free(&c2);
    remove(path);

    CHECK(model_config_preset(&c, "tiny", &err) == 0);
    CHECK(model_config_write(&c, path, &err) == 0);
    CHECK(model_config_load(&c2, path, &err) == 0);
    CHECK(c2.vocab_size == 259 && c2.num_key_value_heads == 2 && c2.head_dim == 32 && c2.tie_word_embeddings &&
          c2.pad_token_id == 258 && c2.eos_token_ids[0] == 257 && strcmp(c2.model_type, "llama") == 0 &&
          strcmp(c2.torch_dtype, "float32") == 0 && c2.max_position_embeddings == 256);
    model_config_free(&c2);
    remove(path);
}

int main(void) {
    test_defaults();
    test_errors();
    test_families();
    test_rope();
    test_write();
    return check_summary("test_model_config");
}
