/* model: the named parameter list of a Llama-family model, its weight and gradient arenas,
 * initialisation, loading from a Hugging Face folder, and the activation reservation.
 * The forward/backward pass is in model_graph.c, config.json in model_config.c.
 *
 * Arena layout: the trainable parameters come first in the weight arena, in parameter
 * order, so weight_arena[0, grad_numel) lines up element for element with grad_arena; the
 * frozen parameters follow. Full fine-tuning makes every parameter trainable, so the weight
 * arena is then simply in parameter (state_dict) order. */
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/nf4.h"
#include "train/model_internal.h"
#include "train/safetensors.h"
#include "train/splitmix.h"

/* ---------------------------------------------------------------- parameter list */

static model_param *add_param(model *m, int ndim, int64_t d0, int64_t d1, bool trainable,
                              bool decay, bool is_lora, const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));

static model_param *add_param(model *m, int ndim, int64_t d0, int64_t d1, bool trainable,
                              bool decay, bool is_lora, const char *fmt, ...) {
    model_param *p = &m->params[m->n_params++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->name, sizeof p->name, fmt, ap);
    va_end(ap);
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim == 2 ? d1 : 0;
    p->numel = (size_t)d0 * (size_t)(ndim == 2 ? d1 : 1);
    p->trainable = trainable;
    p->decay = decay;
    p->is_lora = is_lora;
    p->layer = -1;
    return p;
}

static int validate_config(const model_config *c, ct_error *err) {
    if (c->vocab_size <= 0 || c->hidden_size <= 0 || c->intermediate_size <= 0 ||
        c->num_hidden_layers <= 0 || c->num_attention_heads <= 0 || c->num_key_value_heads <= 0 ||
        c->head_dim <= 0)
        return ct_fail(err, "model config: sizes must be positive (vocab %d, hidden %d, intermediate %d, "
                       "layers %d, heads %d, kv heads %d, head_dim %d)", c->vocab_size, c->hidden_size,
                       c->intermediate_size, c->num_hidden_layers, c->num_attention_heads,
                       c->num_key_value_heads, c->head_dim);
    if (c->num_attention_heads % c->num_key_value_heads != 0)
        return ct_fail(err, "model config: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       c->num_attention_heads, c->num_key_value_heads);
    if (c->head_dim % 2 != 0) return ct_fail(err, "model config: head_dim %d must be even", c->head_dim);
    if ((int64_t)c->num_attention_heads * c->head_dim > INT_MAX / 4)
        return ct_fail(err, "model config: num_attention_heads * head_dim is too large");
    if (!(c->rms_norm_eps > 0) || !(c->rope_theta > 0))
        return ct_fail(err, "model config: rms_norm_eps and rope_theta must be positive");
    return 0;
}

static int validate_lora(const lora_settings *l, ct_error *err) {
    if (l->r < 1 || l->r > 65536) return ct_fail(err, "lora: r must be in 1..65536 (got %d)", l->r);
    if (!isfinite(l->alpha)) return ct_fail(err, "lora: alpha must be a finite number");
    if (!(l->dropout >= 0.0f && l->dropout < 1.0f))
        return ct_fail(err, "lora: dropout must be in [0, 1) (got %g)", (double)l->dropout);
    bool any = false;
    for (int kind = 0; kind < LINEAR_KIND_COUNT; kind++) any = any || l->targets[kind];
    if (!any) return ct_fail(err, "lora: no target modules");
    return 0;
}

static void linear_dims(const model_config *c, linear_kind kind, int *in, int *out) {
    int H = c->hidden_size, I = c->intermediate_size;
    int qdim = c->num_attention_heads * c->head_dim, kvdim = c->num_key_value_heads * c->head_dim;
    switch (kind) {
    case LINEAR_Q: *in = H; *out = qdim; break;
    case LINEAR_K:
    case LINEAR_V: *in = H; *out = kvdim; break;
    case LINEAR_O: *in = qdim; *out = H; break;
    case LINEAR_GATE:
    case LINEAR_UP: *in = H; *out = I; break;
    default: *in = I; *out = H; break;
    }
}

static void add_linear(model *m, int layer, linear_kind kind, bool has_bias) {
    const bool full = !m->has_lora;
    model_linear *lin = &m->layers[layer].lin[kind];
    linear_dims(&m->cfg, kind, &lin->in, &lin->out);
    const char *block = linear_kind_block(kind), *name = linear_kind_name(kind);
    lin->weight = add_param(m, 2, lin->out, lin->in, full, true, false, "model.layers.%d.%s.%s.weight",
                            layer, block, name);
    if (has_bias)
        lin->bias = add_param(m, 1, lin->out, 0, full, false, false, "model.layers.%d.%s.%s.bias",
                              layer, block, name);
    if (m->has_lora && m->lora.targets[kind]) {
        lin->lora_a = add_param(m, 2, m->lora.r, lin->in, true, true, true,
                                "model.layers.%d.%s.%s.lora_A.weight", layer, block, name);
        lin->lora_b = add_param(m, 2, lin->out, m->lora.r, true, true, true,
                                "model.layers.%d.%s.%s.lora_B.weight", layer, block, name);
        /* decayed, as the Hugging Face Trainer does (its exclusions are biases and norms) */
        if (m->lora.use_dora)
            lin->magnitude = add_param(m, 1, lin->out, 0, true, true, true,
                                       "model.layers.%d.%s.%s.lora_magnitude_vector", layer, block, name);
    }
}

/* The first Linear of each group reading one input (q, k, v; o; gate, up; down). */
static const int group_of[LINEAR_KIND_COUNT] = {LINEAR_Q, LINEAR_Q, LINEAR_Q, LINEAR_O,
                                                 LINEAR_GATE, LINEAR_GATE, LINEAR_DOWN};

void model_lora_layout_of(const model_config *cfg, const lora_settings *lora, model_lora_layout *out) {
    int used[LINEAR_KIND_COUNT] = {0}; /* slots taken per group */
    for (int kind = 0; kind < LINEAR_KIND_COUNT; kind++) {
        out->slot[kind] = lora && lora->targets[kind] ? used[group_of[kind]]++ : -1;
    }
    for (int kind = 0; kind < LINEAR_KIND_COUNT; kind++) {
        int in, o;
        linear_dims(cfg, kind, &in, &o);
        out->ld_input[kind] = in + used[group_of[kind]] * (lora ? lora->r : 0);
    }
    /* SwiGLU's backward writes gate's and up's 16-bit dy with one row stride: room for du
     * when either adapter's backward is fused (no dropout: model_internal.h). */
    const bool mlp_du = lora && lora->dropout == 0.0f && (out->slot[LINEAR_GATE] >= 0 || out->slot[LINEAR_UP] >= 0);
    out->ld_mlp_dy = cfg->intermediate_size + (mlp_du ? lora->r : 0);
}

/* transformers' state_dict order: embed_tokens; per layer self_attn (q, k, v, o, q_norm,
 * k_norm), mlp (gate, up, down), input_layernorm, post_attention_layernorm; norm; lm_head. */
static void build_params(model *m) {
    const model_config *c = &m->cfg;
    const bool full = !m->has_lora;
    add_param(m, 2, c->vocab_size, c->hidden_size, full, true, false, "model.embed_tokens.weight");
    for (int l = 0; l < c->num_hidden_layers; l++) {
        model_layer *layer = &m->layers[l];
        layer->param_begin = m->n_params;
        for (int kind = LINEAR_Q; kind <= LINEAR_O; kind++)
            add_linear(m, l, kind, kind == LINEAR_O ? c->o_proj_bias : c->attention_bias);
        if (c->qk_norm) {
            layer->q_norm = add_param(m, 1, c->head_dim, 0, full, false, false,
                                      "model.layers.%d.self_attn.q_norm.weight", l);
            layer->k_norm = add_param(m, 1, c->head_dim, 0, full, false, false,
                                      "model.layers.%d.self_attn.k_norm.weight", l);
        }
        for (int kind = LINEAR_GATE; kind <= LINEAR_DOWN; kind++) add_linear(m, l, kind, c->mlp_bias);
        layer->input_norm = add_param(m, 1, c->hidden_size, 0, full, false, false,
                                      "model.layers.%d.input_layernorm.weight", l);
        layer->post_norm = add_param(m, 1, c->hidden_size, 0, full, false, false,
                                     "model.layers.%d.post_attention_layernorm.weight", l);
        layer->param_end = m->n_params;
        for (int i = layer->param_begin; i < layer->param_end; i++) m->params[i].layer = l;
    }
    add_param(m, 1, c->hidden_size, 0, full, false, false, "model.norm.weight");
    if (!c->tie_word_embeddings)
        add_param(m, 2, c->vocab_size, c->hidden_size, full, true, false, "lm_head.weight");
    /* the flat trainable order is the parameter order; a layer's parameters are neighbours */
    size_t flat = 0;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (p->layer >= 0 && i == m->layers[p->layer].param_begin) m->layers[p->layer].grad_lo = flat;
        p->flat = flat;
        if (p->trainable) flat += p->numel;
        if (p->layer >= 0 && i + 1 == m->layers[p->layer].param_end) m->layers[p->layer].grad_hi = flat;
    }
}

static bool half_only(const model *m, const model_param *p);
static bool is_gemm_weight(const model *m, const model_param *p);
static int add_half_copies(model *m, model_precision p, ct_error *err);
static int add_nf4_codes(model *m, ct_error *err);
static void upload_adapter_casts(model *m);
static void write_fused_adapters(model *m);

int model_create(model *m, const model_config *cfg, const lora_settings *lora, const kernels *k,
                 ct_error *err) {
    return model_create_in(m, cfg, lora, k, MODEL_FP32, NULL, err);
}

/* The parameter list of cfg (+ lora), with no memory behind it yet. */
static int create_param_list(model *m, const model_config *cfg, const lora_settings *lora, ct_error *err) {
    memset(m, 0, sizeof *m);
    if (validate_config(cfg, err)) return -1;
    if (lora && validate_lora(lora, err)) return -1;
    m->cfg = *cfg;
    m->cfg.raw_json = NULL;
    if (lora) {
        m->has_lora = true;
        m->lora = *lora;
    }
    const int L = cfg->num_hidden_layers;
    int capacity = 3 + L * (5 * LINEAR_KIND_COUNT + 4);
    m->params = calloc((size_t)capacity, sizeof *m->params);
    m->layers = calloc((size_t)L, sizeof *m->layers);
    if (!m->params || !m->layers) {
        free(m->params);
        free(m->layers);
        return ct_fail(err, "model: out of memory for the parameter list");
    }
    build_params(m);
    return 0;
}

size_t model_trainable_numel(const model_config *cfg, const lora_settings *lora, ct_error *err) {
    model m;
    if (create_param_list(&m, cfg, lora, err)) return 0;
    size_t n = model_count_params(&m, true);
    free(m.params);
    free(m.layers);
    return n;
}

bool model_param_shardable(const model *m, const model_param *p, model_precision precision) {
    return precision != MODEL_FP32 && p->trainable && !p->is_lora && is_gemm_weight(m, p) &&
           strcmp(p->name, "model.embed_tokens.weight") != 0;
}

/* Overlap of p's flat trainable range with the shard, in p's indices. */
static bool shard_slice(const model_param *p, size_t first, const model_shard *shard, size_t *lo, size_t *hi) {
    size_t a = first > shard->begin ? first : shard->begin, b = first + p->numel;
    if (b > shard->end) b = shard->end;
    if (a >= b) return false;
    *lo = a - first;
    *hi = b - first;
    return true;
}

/* fp32 values p keeps in precision `precision` with shard (NULL: none); *first advances over
 * the trainable range. */
static size_t fp32_values_of(const model *m, const model_param *p, model_precision precision,
                             const model_shard *shard, size_t *first) {
    size_t at = *first, lo, hi;
    if (p->trainable) *first += p->numel;
    if (precision != MODEL_FP32 && half_only(m, p)) return 0;
    if (!shard || !model_param_shardable(m, p, precision)) return p->numel;
    return shard_slice(p, at, shard, &lo, &hi) ? hi - lo : 0;
}

size_t model_fp32_numel(const model *m, const model_shard *shard) {
    size_t n = 0, first = 0;
    for (int i = 0; i < m->n_params; i++) n += fp32_values_of(m, &m->params[i], m->precision, shard, &first);
    return n;
}

bool model_weights_sharded(const model *m) {
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].sharded) return true;
    return false;
}

void model_layers_flat_range(const model *m, size_t *lo, size_t *hi) {
    *lo = m->layers[0].grad_lo;
    *hi = m->layers[m->cfg.num_hidden_layers - 1].grad_hi;
}

float *model_param_fp32(const model_param *p, size_t i) {
    return p->data ? p->data + i : p->master + (i - p->master_lo);
}

int model_create_in(model *m, const model_config *cfg, const lora_settings *lora, const kernels *k,
                    model_precision precision, const model_shard *shard, ct_error *err) {
    const model_layout layout = {.precision = precision, .shard = shard};
    return model_create_as(m, cfg, lora, k, &layout, err);
}

/* Gradient buckets: the size of one (the largest layer's trainable values), and every
 * gradient pointer — outside the layers in flat order from grad_held, layer l's in bucket
 * l % 2 at its offset in the layer (so a layer's neighbours stay neighbours). */
static size_t bucket_numel(const model *m) {
    size_t most = 0;
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        if (m->layers[l].grad_hi - m->layers[l].grad_lo > most) most = m->layers[l].grad_hi - m->layers[l].grad_lo;
    return most;
}

static void point_grads(model *m) {
    size_t outside_at = 0;
    const size_t outside = m->grad_buckets ? m->grad_held_numel - 2 * m->grad_bucket_numel : 0;
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
        model_layer *layer = &m->layers[l];
        layer->grads = m->grad_buckets ? m->grad_held + outside + (size_t)(l % 2) * m->grad_bucket_numel
                       : m->grad_arena ? m->grad_arena + layer->grad_lo : NULL;
    }
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (!p->trainable) continue;
        if (!m->grad_buckets) {
            p->grad = m->grad_arena + p->flat;
        } else if (p->layer >= 0) {
            const model_layer *layer = &m->layers[p->layer];
            p->grad = layer->grads + (p->flat - layer->grad_lo);
        } else {
            p->grad = m->grad_held + outside_at;
            outside_at += p->numel;
        }
    }
}

int model_create_as(model *m, const model_config *cfg, const lora_settings *lora, const kernels *k,
                    const model_layout *layout, ct_error *err) {
    const model_precision precision = layout->precision;
    const model_shard *shard = layout->shard;
    if (create_param_list(m, cfg, lora, err)) return -1;
    m->k = k;
    if (shard && precision == MODEL_FP32)
        return model_free(m), ct_fail(err, "model: fp32 weights are sharded only in mixed precision");
    if (layout->gather_layers && !shard)
        return model_free(m), ct_fail(err, "model: layer-by-layer weights (ZeRO 3) need sharded fp32 weights");
    if (layout->nf4_base && (!m->has_lora || precision == MODEL_FP32 || layout->gather_layers))
        return model_free(m), ct_fail(err, "model: a 4-bit (NF4) base needs LoRA adapters and mixed precision "
                                           "(its weights are read back into 16-bit copies), without ZeRO 3");
    m->gather_layers = layout->gather_layers;
    m->nf4_base = layout->nf4_base;
    m->layer_held[0] = m->layer_held[1] = -1;
    if (cfg->raw_json && !(m->cfg.raw_json = cJSON_Duplicate((const cJSON *)cfg->raw_json, true)))
        return model_free(m), ct_fail(err, "model: out of memory copying config.json");
    if (!(m->state = calloc(1, sizeof(model_state))))
        return model_free(m), ct_fail(err, "model: out of memory for the parameter list");

    /* In mixed precision the weights read only through their 16-bit copy get no fp32 memory
     * at all, not even for a moment (a LoRA base: 4 bytes a parameter); with a shard, the
     * shardable ones keep only the shard's values. */
    const bool mixed = precision != MODEL_FP32;
    size_t first = 0;
    for (int i = 0; i < m->n_params; i++) {
        const model_param *p = &m->params[i];
        const bool sharded = shard && model_param_shardable(m, p, precision);
        const size_t kept = fp32_values_of(m, p, precision, shard, &first);
        if (sharded) m->master_numel += kept;
        else m->weight_numel += kept;
        if (p->trainable) m->grad_numel += p->numel;
    }
    size_t grad_values = m->grad_numel;
    if (layout->grad_buckets && m->grad_numel) {
        m->grad_buckets = true;
        m->grad_bucket_numel = bucket_numel(m);
        m->grad_held_numel = m->grad_numel + 2 * m->grad_bucket_numel;
        for (int l = 0; l < cfg->num_hidden_layers; l++) m->grad_held_numel -= m->layers[l].grad_hi - m->layers[l].grad_lo;
        grad_values = m->grad_held_numel;
    }
    float **grads = m->grad_buckets ? &m->grad_held : &m->grad_arena;
    m->weight_arena = k->alloc((m->weight_numel ? m->weight_numel : 1) * sizeof(float));
    if (grad_values) *grads = k->alloc(grad_values * sizeof(float));
    if (m->master_numel) m->master_arena = k->alloc(m->master_numel * sizeof(float));
    if (!m->weight_arena || (grad_values && !*grads) || (m->master_numel && !m->master_arena)) {
        size_t bytes = (m->weight_numel + grad_values + m->master_numel) * sizeof(float);
        model_free(m);
        return ct_fail(err, "model: cannot allocate %zu bytes of parameters and gradients on the %s backend",
                       bytes, k->name);
    }
    /* The trainable weights first (without a shard, in place of their gradients), then the
     * frozen ones; sharded weights' slices in the master arena, in the same order. */
    size_t trainable_at = 0, arena_at = 0, master_at = 0;
    point_grads(m);
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (!p->trainable) continue;
        if (shard && model_param_shardable(m, p, precision)) {
            p->sharded = true;
            p->gathered = m->gather_layers && p->layer >= 0;
            p->data = NULL;
            if (shard_slice(p, trainable_at, shard, &p->master_lo, &p->master_hi)) {
                p->master = m->master_arena + master_at;
                master_at += p->master_hi - p->master_lo;
            }
        } else {
            p->data = m->weight_arena + arena_at;
            arena_at += p->numel;
        }
        trainable_at += p->numel;
    }
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (p->trainable) continue;
        if (mixed && half_only(m, p)) {
            p->data = NULL;
        } else {
            p->data = m->weight_arena + arena_at;
            arena_at += p->numel;
        }
    }

    model_state *s = m->state;
    int half = cfg->head_dim / 2;
    float *inv_freq = malloc((size_t)half * sizeof(float));
    s->inv_freq = k->alloc((size_t)half * sizeof(float));
    if (!inv_freq || !s->inv_freq) {
        free(inv_freq);
        model_free(m);
        return ct_fail(err, "model: out of memory for the rotary tables");
    }
    model_rope_inv_freq(&m->cfg, inv_freq);
    k->upload(s->inv_freq, inv_freq, (size_t)half * sizeof(float));
    free(inv_freq);
    if (m->nf4_base && add_nf4_codes(m, err)) {
        model_free(m);
        return -1;
    }
    if (mixed) {
        if (add_half_copies(m, precision, err)) {
            model_free(m);
            return -1;
        }
        upload_adapter_casts(m);
        write_fused_adapters(m);
    }
    return 0;
}

/* ---------------------------------------------------------------- mixed precision */

kernels_half_format model_half_format(model_precision p) {
    return p == MODEL_FP16_MIXED ? KERNELS_FP16 : KERNELS_BF16;
}

/* The weights a GEMM reads: Linear weights, LoRA adapters, lm_head, and embed_tokens when it
 * is tied (then also the vocabulary projection). */
static bool is_gemm_weight(const model *m, const model_param *p) {
    if (p->ndim != 2) return false;
    if (!strcmp(p->name, "model.embed_tokens.weight")) return m->cfg.tie_word_embeddings;
    return true;
}

/* Whether p has a 16-bit copy in mixed precision: every GEMM weight, and a frozen untied
 * embedding table, so that it too can drop its fp32 value (half_only). */
static bool has_half_copy(const model *m, const model_param *p) {
    return is_gemm_weight(m, p) || (!p->trainable && !strcmp(p->name, "model.embed_tokens.weight"));
}

/* A frozen weight read only through its 16-bit copy needs no fp32 value in mixed precision:
 * nothing updates it (half the memory of a frozen base). GEMMs read the Linear weights'
 * copies; the lookup widens the embedding table's picked rows (embedding_fwd_half), tied
 * (the lm_head's copy) or untied (a copy of its own): 1 GiB less at Llama-3.2-1B and at
 * Llama-3.1-8B. */
static bool half_only(const model *m, const model_param *p) {
    return !p->trainable && has_half_copy(m, p);
}

/* A parameter's 16-bit copy as rows: n_rows rows of row_len values, stride apart (one row
 * of numel values when the copy is contiguous). */
static void half_rows_of(const model_param *p, size_t *n_rows, size_t *row_len, size_t *stride) {
    const bool padded = p->ndim == 2 && p->half_ld != p->shape[1];
    *row_len = padded ? (size_t)p->shape[1] : p->numel;
    *n_rows = padded ? (size_t)p->shape[0] : 1;
    *stride = padded ? (size_t)p->half_ld : p->numel;
}

/* Moves the weights into a new arena laid out for the precision m->precision is about to
 * take (mixed: half_only weights leave the fp32 arena; fp32: they come back, widened from
 * their 16-bit values). The trainable range stays first and in place (it lines up with the
 * gradients). Both arenas exist for a moment (model_create_in spares the trainer that). */
static int relayout_weights(model *m, bool mixed, ct_error *err) {
    size_t numel = 0;
    bool moves = false;
    for (int i = 0; i < m->n_params; i++) {
        const bool drops = mixed && half_only(m, &m->params[i]);
        if (!drops) numel += m->params[i].numel;
        moves = moves || drops != !m->params[i].data;
    }
    /* Nothing leaves or comes back (full fine-tuning): the arena stays, rather than a copy of
     * every weight existing beside it for a moment. */
    if (!moves) return 0;
    float *arena = m->k->alloc((numel ? numel : 1) * sizeof(float));
    if (!arena)
        return ct_fail(err, "model: cannot allocate %zu bytes of parameters on the %s backend",
                       numel * sizeof(float), m->k->name);
    if (m->grad_numel) m->k->copy(arena, m->weight_arena, m->grad_numel * sizeof(float));
    size_t at = m->grad_numel;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (p->trainable) {
            p->data = arena + (p->data - m->weight_arena);
            continue;
        }
        if (mixed && half_only(m, p)) {
            p->data = NULL;
            continue;
        }
        float *dst = arena + at;
        at += p->numel;
        if (p->data) {
            m->k->copy(dst, p->data, p->numel * sizeof(float));
        } else {
            size_t n_rows, len, stride;
            half_rows_of(p, &n_rows, &len, &stride);
            for (size_t r = 0; r < n_rows; r++)
                m->k->from_half(dst + r * len, p->half + r * stride, len, model_half_format(m->precision));
        }
        p->data = dst;
    }
    if (m->weight_arena) m->k->release(m->weight_arena);
    m->weight_arena = arena;
    m->weight_numel = numel;
    return 0;
}

/* Whether precision p runs m's adapters inside the base GEMMs (model_internal.h). DoRA scales
 * the sum of the base and adapter products per output column, so it keeps them apart. */
static bool fuses_lora(const model *m, model_precision p) {
    return m->has_lora && p != MODEL_FP32 && !m->lora_unfused && !m->lora.use_dora;
}

/* Whether q gets a 16-bit copy of its own under precision p: has_half_copy, except fused
 * adapters (theirs live in the base weight's padded copy). */
static bool has_own_half(const model *m, const model_param *q, model_precision p) {
    return has_half_copy(m, q) && !(q->is_lora && fuses_lora(m, p));
}

/* Sets each Linear's fused-LoRA fields and its weight's 16-bit shape for precision p
 * (model_internal.h); every other GEMM weight gets a plain [shape] copy. */
static void plan_half_layout(model *m, model_precision p) {
    const bool fused = fuses_lora(m, p);
    model_lora_layout layout;
    model_lora_layout_of(&m->cfg, fused ? &m->lora : NULL, &layout);
    for (int i = 0; i < m->n_params; i++) {
        m->params[i].half_ld = (int)m->params[i].shape[1];
        m->params[i].half_rows = m->params[i].shape[0];
    }
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        for (int kind = 0; kind < LINEAR_KIND_COUNT; kind++) {
            model_linear *lin = &m->layers[l].lin[kind];
            const bool on = fused && lin->lora_a && layout.slot[kind] >= 0;
            lin->u_col = on ? lin->in + layout.slot[kind] * m->lora.r : 0;
            lin->concat_dy = on && m->lora.dropout == 0.0f; /* dropout: mask(du A) */
            /* every copy of a group sharing an input (q, k, v; gate, up) has the group's row
             * stride, so that stacked copies read as one matrix (model_graph.c: q, k and v's
             * input gradient in one GEMM) */
            lin->weight->half_ld = layout.ld_input[kind];
            if (on) lin->weight->half_rows = lin->out + m->lora.r;
        }
}

/* The casts that round A and scaling * B of every fused adapter into its base weight's padded
 * copy (A below W's rows, scaling * B in the columns from u_col), kept in backend memory so
 * that a step's refresh is one to_half_2d_many: allocated with the copies, filled once the
 * weights have reached their final arena (upload_adapter_casts). */
static int alloc_adapter_casts(model *m, ct_error *err) {
    int n = 0;
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        for (int kind = 0; kind < LINEAR_KIND_COUNT; kind++) n += m->layers[l].lin[kind].u_col ? 2 : 0;
    if (n > 0 && !(m->adapter_casts = m->k->alloc((size_t)n * sizeof(kernels_half_block))))
        return ct_fail(err, "model: cannot allocate the adapters' %d casts on the %s backend", n, m->k->name);
    m->n_adapter_casts = n;
    return 0;
}

static void upload_adapter_casts(model *m) {
    const float scaling = lora_scaling(&m->lora);
    const int r = m->lora.r;
    int n = 0;
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        for (int kind = 0; kind < LINEAR_KIND_COUNT; kind++) {
            const model_linear *lin = &m->layers[l].lin[kind];
            if (!lin->u_col) continue;
            uint16_t *w = lin->weight->half;
            const int ld = lin->weight->half_ld;
            const kernels_half_block cast[2] = {
                {w + (size_t)lin->out * ld, lin->lora_a->data, ld, lin->in, r, lin->in, 1.0f},
                {w + lin->u_col, lin->lora_b->data, ld, r, lin->out, r, scaling},
            };
            m->k->upload(m->adapter_casts + n, cast, sizeof cast);
            n += 2;
        }
}

/* Rounds A and scaling * B of every fused adapter into its base weight's padded copy. */
static void write_fused_adapters(model *m) {
    /* QLoRA: the casts point into the layer buffers; each layer's turn writes its own */
    if (m->n_adapter_casts > 0 && !m->nf4_base)
        m->k->to_half_2d_many(model_half_format(m->precision), m->adapter_casts, m->n_adapter_casts);
}

static void drop_half_copies(model *m) {
    if (m->adapter_casts) m->k->release(m->adapter_casts);
    m->adapter_casts = NULL;
    m->n_adapter_casts = 0;
    if (m->half_arena) m->k->release(m->half_arena);
    m->half_arena = NULL;
    m->half_numel = 0;
    m->layer_halves[0] = m->layer_halves[1] = NULL;
    m->layer_half_numel = 0;
    m->layer_held[0] = m->layer_held[1] = -1;
    for (int i = 0; i < m->n_params; i++) m->params[i].half = NULL;
    plan_half_layout(m, MODEL_FP32);
}

/* Whether q's 16-bit copy lives in its layer's buffer (ZeRO 3's gathered weights, QLoRA's
 * quantized ones) rather than in a place of its own. */
static bool in_layer_buffer(const model_param *q) { return q->gathered || q->quantized; }

/* The 16-bit copies for precision p, rounded from the fp32 values where a parameter has them
 * (zero otherwise: the arena starts zero-filled), and the fused adapters' casts; sets
 * m->precision. The casts' pointers are uploaded by the caller, once the fp32 weights are
 * where they stay. */
static int add_half_copies(model *m, model_precision p, ct_error *err) {
    plan_half_layout(m, p);
    /* ZeRO 3 and QLoRA: the gathered or quantized weights' copies go to the layer buffers,
     * at the offsets the layer's own arena would give them (every layer has the same shapes;
     * a layer's parameters are neighbours, so one running offset restarts at each layer) */
    size_t total = 0, in_layer = 0;
    int layer = -1;
    m->layer_half_numel = 0;
    for (int i = 0; i < m->n_params; i++) {
        const model_param *q = &m->params[i];
        if (!has_own_half(m, q, p)) continue;
        const size_t n = (size_t)q->half_rows * (size_t)q->half_ld;
        if (!in_layer_buffer(q)) {
            total += n;
            continue;
        }
        in_layer = q->layer == layer ? in_layer + n : n;
        layer = q->layer;
        if (in_layer > m->layer_half_numel) m->layer_half_numel = in_layer;
    }
    total += 2 * m->layer_half_numel;
    if (!(m->half_arena = m->k->alloc((total ? total : 1) * sizeof(uint16_t)))) {
        drop_half_copies(m);
        return ct_fail(err, "model: cannot allocate %zu bytes of 16-bit weight copies on the %s backend",
                       total * sizeof(uint16_t), m->k->name);
    }
    m->layer_halves[0] = m->half_arena + (total - 2 * m->layer_half_numel);
    m->layer_halves[1] = m->layer_halves[0] + m->layer_half_numel;
    size_t at = 0;
    layer = -1;
    for (int i = 0; i < m->n_params; i++) {
        model_param *q = &m->params[i];
        if (!has_own_half(m, q, p)) continue;
        const size_t n = (size_t)q->half_rows * (size_t)q->half_ld;
        if (in_layer_buffer(q)) {
            in_layer = q->layer == layer ? in_layer : 0;
            layer = q->layer;
            q->half = m->layer_halves[q->layer % 2] + in_layer;
            in_layer += n;
            continue;
        }
        q->half = m->half_arena + at;
        at += n;
        /* the padding starts at zero (alloc zero-fills): the zero columns of the layout */
        if (q->data)
            m->k->to_half_2d(model_half_format(p), q->half, q->half_ld, q->data, (int)q->shape[1],
                             (int)q->shape[0], (int)q->shape[1], 1.0f);
    }
    m->half_numel = total;
    m->precision = p;
    if (alloc_adapter_casts(m, err)) {
        drop_half_copies(m);
        m->precision = MODEL_FP32;
        return -1;
    }
    return 0;
}

bool model_nf4_quantizes(const char *name, int ndim) {
    return ndim == 2 && !strncmp(name, "model.layers.", 13) && !strstr(name, ".lora_");
}

/* QLoRA: the weights held in 4 bits, the layers' frozen Linear weights. */
static bool quantizable(const model_param *p) {
    return !p->trainable && model_nf4_quantizes(p->name, p->ndim);
}

static size_t round_up_16(size_t n) { return (n + 15) / 16 * 16; }

/* Marks them quantized and places them in one backend allocation: every weight's codes (each
 * 16-byte aligned, for wide loads), then every weight's absmaxes. Zero until loaded. */
static int add_nf4_codes(model *m, ct_error *err) {
    size_t code_bytes = 0, blocks = 0;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (!(p->quantized = quantizable(p))) continue;
        code_bytes += round_up_16(nf4_code_bytes(p->numel));
        blocks += nf4_block_count(p->numel);
    }
    const size_t bytes = code_bytes + blocks * sizeof(float);
    if (!(m->nf4_arena = m->k->alloc(bytes ? bytes : 1)))
        return ct_fail(err, "model: cannot allocate %zu bytes of 4-bit (NF4) weights on the %s backend", bytes,
                       m->k->name);
    size_t codes_at = 0, absmax_at = code_bytes;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (!p->quantized) continue;
        p->nf4_codes = m->nf4_arena + codes_at;
        p->nf4_absmax = (float *)(void *)(m->nf4_arena + absmax_at);
        codes_at += round_up_16(nf4_code_bytes(p->numel));
        absmax_at += nf4_block_count(p->numel) * sizeof(float);
    }
    m->nf4_bytes = bytes;
    return 0;
}

int model_set_precision(model *m, model_precision p, ct_error *err) {
    if (model_weights_sharded(m))
        return ct_fail(err, "model: a model whose fp32 weights are sharded cannot change precision");
    if (m->nf4_base)
        return ct_fail(err, "model: a model with a 4-bit (NF4) base cannot change precision");
    if (m->precision != MODEL_FP32 && relayout_weights(m, false, err)) return -1;
    drop_half_copies(m);
    m->precision = MODEL_FP32;
    m->half_stale_frozen = m->half_stale_trainable = false;
    if (p == MODEL_FP32) return 0;
    if (add_half_copies(m, p, err)) return -1;
    if (relayout_weights(m, true, err)) { /* nothing moved: back to fp32 */
        drop_half_copies(m);
        m->precision = MODEL_FP32;
        return -1;
    }
    upload_adapter_casts(m); /* the adapters' fp32 values are in their final arena now */
    write_fused_adapters(m);
    return 0;
}

/* 16-bit-only weights move between the host and the backend as 16-bit values, converted on
 * the host by the CPU reference conversions (bit-identical to every backend's: a kernels
 * contract), in chunks of HOST_CHUNK through a fixed buffer. */
enum { HOST_CHUNK = 4096 };

/* A quantized weight's values [offset, offset + n) (offset a multiple of NF4_BLOCK; n whole
 * blocks or the rest of the weight) as NF4 codes and absmaxes: quantized on the host and
 * uploaded in one piece each, or through fixed buffers a chunk at a time when the host has no
 * room for the piece (an upload per chunk is slow on a GPU). */
static void upload_nf4(const model *m, model_param *p, size_t offset, const float *host, size_t n) {
    const size_t code_bytes = nf4_code_bytes(n), blocks = nf4_block_count(n);
    uint8_t *codes = malloc(code_bytes);
    float *absmax = malloc(blocks * sizeof(float));
    if (codes && absmax) {
        nf4_quantize(host, n, codes, absmax);
        m->k->upload(p->nf4_codes + offset / 2, codes, code_bytes);
        m->k->upload(p->nf4_absmax + offset / NF4_BLOCK, absmax, blocks * sizeof(float));
    } else {
        uint8_t chunk_codes[HOST_CHUNK / 2];
        float chunk_absmax[HOST_CHUNK / NF4_BLOCK];
        for (size_t done = 0; done < n; done += HOST_CHUNK) {
            const size_t piece = n - done < HOST_CHUNK ? n - done : HOST_CHUNK, at = offset + done;
            nf4_quantize(host + done, piece, chunk_codes, chunk_absmax);
            m->k->upload(p->nf4_codes + at / 2, chunk_codes, nf4_code_bytes(piece));
            m->k->upload(p->nf4_absmax + at / NF4_BLOCK, chunk_absmax, nf4_block_count(piece) * sizeof(float));
        }
    }
    free(codes);
    free(absmax);
}

/* A quantized weight's values as fp32: its codes read back on the host. */
static void download_nf4(const model *m, const model_param *p, float *host) {
    uint8_t codes[HOST_CHUNK / 2];
    float absmax[HOST_CHUNK / NF4_BLOCK];
    for (size_t at = 0; at < p->numel; at += HOST_CHUNK) {
        const size_t piece = p->numel - at < HOST_CHUNK ? p->numel - at : HOST_CHUNK;
        m->k->download(codes, p->nf4_codes + at / 2, nf4_code_bytes(piece));
        m->k->download(absmax, p->nf4_absmax + at / NF4_BLOCK, nf4_block_count(piece) * sizeof(float));
        nf4_dequantize(codes, absmax, piece, host + at);
    }
}

void model_param_download(const model *m, const model_param *p, float *host) {
    if (p->data) {
        m->k->download(host, p->data, p->numel * sizeof(float));
        return;
    }
    if (p->quantized) {
        download_nf4(m, p, host);
        return;
    }
    uint16_t bits[HOST_CHUNK];
    size_t n_rows, len, stride;
    half_rows_of(p, &n_rows, &len, &stride);
    for (size_t r = 0; r < n_rows; r++)
        for (size_t start = 0; start < len; start += HOST_CHUNK) {
            size_t n = len - start < HOST_CHUNK ? len - start : HOST_CHUNK;
            m->k->download(bits, p->half + r * stride + start, n * sizeof(uint16_t));
            kernels_cpu()->from_half(host + r * len + start, bits, n, model_half_format(m->precision));
        }
}

void model_param_upload_range(const model *m, model_param *p, size_t offset, const float *host, size_t n) {
    if (p->data) {
        m->k->upload(p->data + offset, host, n * sizeof(float));
        return;
    }
    if (p->quantized) {
        upload_nf4(m, p, offset, host, n);
        return;
    }
    if (p->master) { /* the slice of this rank's shard, then the 16-bit copy of them all */
        const size_t lo = offset > p->master_lo ? offset : p->master_lo;
        const size_t hi = offset + n < p->master_hi ? offset + n : p->master_hi;
        if (lo < hi) m->k->upload(p->master + (lo - p->master_lo), host + (lo - offset), (hi - lo) * sizeof(float));
    }
    if (p->gathered) return; /* rounded from the shards when its layer is next gathered
                              * (the caller's model_weights_changed makes the buffers stale) */
    uint16_t bits[HOST_CHUNK];
    size_t n_rows, len, stride;
    half_rows_of(p, &n_rows, &len, &stride);
    (void)n_rows;
    for (size_t done = 0; done < n;) {
        /* no piece crosses a row of the (possibly padded) copy */
        const size_t at = offset + done, row = at / len, col = at % len;
        size_t piece = len - col < n - done ? len - col : n - done;
        if (piece > HOST_CHUNK) piece = HOST_CHUNK;
        kernels_cpu()->to_half(bits, host + done, piece, model_half_format(m->precision));
        m->k->upload(p->half + row * stride + col, bits, piece * sizeof(uint16_t));
        done += piece;
    }
}

void model_param_upload(const model *m, model_param *p, const float *host) {
    model_param_upload_range(m, p, 0, host, p->numel);
}

void model_weights_changed(model *m, bool trainable_only) {
    if (m->precision == MODEL_FP32) return;
    m->layer_held[0] = m->layer_held[1] = -1;
    m->half_stale_trainable = true;
    m->half_fresh_begin = m->half_fresh_end = 0;
    if (!trainable_only) m->half_stale_frozen = true;
}

void model_weights_changed_except(model *m, size_t begin, size_t end) {
    if (m->precision == MODEL_FP32) return;
    m->layer_held[0] = m->layer_held[1] = -1; /* AdamW writes no gathered copy */
    /* Two updates before a refresh: the first one's fresh range is stale again. */
    if (m->half_stale_trainable && m->half_fresh_begin < m->half_fresh_end) begin = end = 0;
    m->half_stale_trainable = true;
    m->half_fresh_begin = begin;
    m->half_fresh_end = end > begin ? end : begin;
}

/* QLoRA: layer's quantized weights read back into its buffer, then its fused adapters' A and
 * scaling * B cast beside them (their casts point into the buffer: every layer has the same
 * number, in layer order). */
static void read_back_layer(model *m, int layer) {
    const model_layer *ly = &m->layers[layer];
    const kernels_half_format fmt = model_half_format(m->precision);
    for (int i = ly->param_begin; i < ly->param_end; i++) {
        const model_param *p = &m->params[i];
        if (p->quantized)
            m->k->nf4_to_half_2d(fmt, p->half, p->half_ld, p->nf4_codes, p->nf4_absmax, (int)p->shape[0],
                                 (int)p->shape[1]);
    }
    const int per_layer = m->n_adapter_casts / m->cfg.num_hidden_layers;
    if (per_layer > 0) m->k->to_half_2d_many(fmt, m->adapter_casts + (size_t)layer * (size_t)per_layer, per_layer);
}

int model_layer_weights(model *m, int layer, ct_error *err) {
    if (!m->gather_layers && !m->nf4_base) return 0;
    if (layer < 0 || layer >= m->cfg.num_hidden_layers)
        return ct_fail(err, "model: layer %d of %d", layer, m->cfg.num_hidden_layers);
    int *held = &m->layer_held[layer % 2];
    if (*held == layer) return 0;
    if (m->nf4_base) {
        read_back_layer(m, layer);
        *held = layer;
        return 0;
    }
    if (!m->layer_weights)
        return ct_fail(err, "model: layer-by-layer weights (ZeRO 3) need a layer_weights callback to gather them");
    *held = -1; /* until the callback succeeds */
    if (m->layer_weights(m->layer_weights_ctx, m, layer, err)) return -1;
    *held = layer;
    return 0;
}

int model_pass_weights(model *m, ct_error *err) {
    for (int l = 0; m->gather_layers && l < m->cfg.num_hidden_layers; l++)
        if (model_layer_weights(m, l, err)) return -1;
    return 0;
}

/* Rounds p's values [lo, hi) (indices into p) to its 16-bit copy. */
static void refresh_range(model *m, model_param *p, size_t lo, size_t hi) {
    if (hi > lo) m->k->to_half(p->half + lo, p->data + lo, hi - lo, model_half_format(m->precision));
}

void model_refresh_half(model *m) {
    if (!m->half_stale_frozen && !m->half_stale_trainable) return;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        /* (padded copies belong to frozen LoRA bases, which have no fp32 data to refresh from) */
        if (!p->half || !p->data || !(p->trainable ? m->half_stale_trainable : m->half_stale_frozen)) continue;
        if (!p->trainable || !p->grad) {
            refresh_range(m, p, 0, p->numel);
            continue;
        }
        /* Skip the part the optimizer wrote: the values of [fresh_begin, fresh_end) in p. */
        size_t first = p->flat, last = first + p->numel;
        size_t lo = m->half_fresh_begin > first ? m->half_fresh_begin : first;
        size_t hi = m->half_fresh_end < last ? m->half_fresh_end : last;
        if (lo >= hi) {
            refresh_range(m, p, 0, p->numel);
            continue;
        }
        refresh_range(m, p, 0, lo - first);
        refresh_range(m, p, hi - first, p->numel);
    }
    if (m->half_stale_trainable) write_fused_adapters(m); /* adapters: no copy of their own */
    m->half_stale_frozen = m->half_stale_trainable = false;
    m->half_fresh_begin = m->half_fresh_end = 0;
}

static void release_reservation(model *m) {
    model_state *s = m->state;
    if (!s) return;
    if (s->float_arena) m->k->release(s->float_arena);
    if (s->int_arena) m->k->release(s->int_arena);
    free(s->acts);
    free(s->host_positions);
    free(s->host_id_keys);
    free(s->host_loss);
    float *inv_freq = s->inv_freq;
    const struct model_loss_slots slots = s->slots;
    const struct model_kv_cache cache = s->cache;
    memset(s, 0, sizeof *s);
    s->inv_freq = inv_freq;
    s->slots = slots;
    s->cache = cache;
    s->cache.dora_scales_held = false; /* they lived in the released arena */
}

void model_cache_release(model *m) {
    model_state *s = m->state;
    if (s && s->cache.block) m->k->release(s->cache.block);
    if (s) memset(&s->cache, 0, sizeof s->cache);
}

int model_cache_reserve(model *m, int capacity, ct_error *err) {
    model_state *s = m->state;
    if (capacity <= 0) return ct_fail(err, "model_cache_reserve: capacity %d must be positive", capacity);
    s->cache.len = 0;
    s->cache.dora_scales_held = false;
    if (s->cache.block && s->cache.capacity >= capacity) return 0;
    model_cache_release(m);
    const model_config *c = &m->cfg;
    const size_t elem = m->precision == MODEL_FP32 ? sizeof(float) : sizeof(uint16_t);
    const size_t bytes = 2 * (size_t)c->num_hidden_layers * (size_t)capacity * (size_t)c->num_key_value_heads *
                         (size_t)c->head_dim * elem;
    if (!(s->cache.block = m->k->alloc(bytes)))
        return ct_fail(err, "model_cache_reserve: cannot allocate %zu bytes of KV cache for %d tokens on the %s backend",
                       bytes, capacity, m->k->name);
    s->cache.elem_bytes = elem;
    s->cache.capacity = capacity;
    return 0;
}

void model_cache_reset(model *m) {
    model_state *s = m->state;
    s->cache.len = 0;
    s->cache.dora_scales_held = false;
}

void model_cache_truncate(model *m, int len) {
    model_state *s = m->state;
    if (len >= 0 && len < s->cache.len) s->cache.len = len;
    if (s->cache.len == 0) s->cache.dora_scales_held = false;
}

static void release_loss_slots(model *m) {
    model_state *s = m->state;
    if (s->slots.block) m->k->release(s->slots.block);
    free(s->slots.host_block);
    free(s->slots.tokens);
    memset(&s->slots, 0, sizeof s->slots);
}

int model_reserve_loss_slots(model *m, int n_slots, int tokens_per_slot, ct_error *err) {
    model_state *s = m->state;
    if (n_slots <= 0 || tokens_per_slot <= 0)
        return ct_fail(err, "model_reserve_loss_slots: %d slots of %d tokens", n_slots, tokens_per_slot);
    if (s->slots.n == n_slots && s->slots.stride == tokens_per_slot) return 0;
    release_loss_slots(m);
    const size_t n = (size_t)n_slots * (size_t)tokens_per_slot;
    const size_t bytes = sizeof(double) + n * sizeof(float);
    s->slots.block = m->k->alloc(bytes);
    s->slots.host_block = malloc(bytes);
    s->slots.tokens = calloc((size_t)n_slots, sizeof(int));
    if (!s->slots.block || !s->slots.host_block || !s->slots.tokens) {
        release_loss_slots(m);
        return ct_fail(err, "model: cannot allocate %zu bytes of loss slots on the %s backend", bytes, m->k->name);
    }
    s->slots.device = (float *)((char *)s->slots.block + sizeof(double));
    s->slots.host = (float *)((char *)s->slots.host_block + sizeof(double));
    s->slots.n = n_slots;
    s->slots.stride = tokens_per_slot;
    return 0;
}

double *model_loss_slots_scalar(model *m) {
    const model_state *s = m->state;
    return s ? s->slots.block : NULL;
}

void model_free(model *m) {
    if (m->state) {
        release_reservation(m);
        release_loss_slots(m);
        model_cache_release(m);
        model_state *s = m->state;
        if (s->inv_freq) m->k->release(s->inv_freq);
        free(s);
    }
    if (m->weight_arena) m->k->release(m->weight_arena);
    if (m->master_arena) m->k->release(m->master_arena);
    if (m->grad_arena) m->k->release(m->grad_arena);
    if (m->grad_held) m->k->release(m->grad_held);
    if (m->half_arena) m->k->release(m->half_arena);
    if (m->adapter_casts) m->k->release(m->adapter_casts);
    if (m->nf4_arena) m->k->release(m->nf4_arena);
    free(m->params);
    free(m->layers);
    model_config_free(&m->cfg);
    memset(m, 0, sizeof *m);
}

model_param *model_find_param(model *m, const char *name) {
    for (int i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0) return &m->params[i];
    return NULL;
}

size_t model_count_params(const model *m, bool trainable_only) {
    size_t n = 0;
    for (int i = 0; i < m->n_params; i++)
        if (!trainable_only || m->params[i].trainable) n += m->params[i].numel;
    return n;
}

void model_zero_grads(model *m) {
    for (int i = 0; i < m->n_params; i++) m->params[i].grad_stale = m->params[i].grad != NULL;
}

void model_settle_grads(model *m) {
    model_settle_param_grads(m, 0, m->n_params);
}

void model_settle_param_grads(model *m, int begin, int end) {
    float *run = NULL;
    size_t run_numel = 0;
    for (int i = begin; i <= end; i++) {
        model_param *p = i < end ? &m->params[i] : NULL;
        if (p && p->grad && p->grad_stale && run && run + run_numel == p->grad) {
            run_numel += p->numel;
        } else {
            if (run) m->k->zero(run, run_numel * sizeof(float));
            run = p && p->grad && p->grad_stale ? p->grad : NULL;
            run_numel = run ? p->numel : 0;
        }
        if (p) p->grad_stale = false;
    }
}

/* ---------------------------------------------------------------- initialisation */

/* Uniform in (0, 1], 53 random bits. */
static double uniform01(uint64_t *state) {
    return ((double)(splitmix64_next(state) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

/* Each parameter draws from its own stream keyed by its name, so a base weight is the
 * same whether or not adapters (or other parameters) exist beside it. */
static uint64_t param_stream(uint64_t seed, const char *name) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) h = (h ^ *p) * 0x100000001b3ull;
    uint64_t state = seed ^ h;
    splitmix64_next(&state);
    return state;
}

typedef enum { INIT_ZERO, INIT_ONE, INIT_NORMAL, INIT_UNIFORM } init_kind;

/* Fills a parameter through a fixed host buffer (no allocation that could fail). */
static void init_param(const model *m, model_param *p, init_kind kind, double scale, uint64_t seed,
                       int64_t zero_row) {
    enum { CHUNK = 4096 };
    float host[CHUNK];
    uint64_t state = param_stream(seed, p->name);
    const size_t row = p->ndim == 2 ? (size_t)p->shape[1] : p->numel;
    for (size_t start = 0; start < p->numel; start += CHUNK) {
        size_t n = p->numel - start < CHUNK ? p->numel - start : CHUNK;
        for (size_t i = 0; i < n; i += 2) {
            float a = 0.0f, b = 0.0f;
            if (kind == INIT_ONE) {
                a = b = 1.0f;
            } else if (kind == INIT_NORMAL) { /* Box-Muller: two normals per two uniforms */
                double radius = sqrt(-2.0 * log(uniform01(&state)));
                double angle = 2.0 * M_PI * uniform01(&state);
                a = (float)(scale * radius * cos(angle));
                b = (float)(scale * radius * sin(angle));
            } else if (kind == INIT_UNIFORM) {
                a = (float)(scale * (2.0 * uniform01(&state) - 1.0));
                b = (float)(scale * (2.0 * uniform01(&state) - 1.0));
            }
            host[i] = a;
            if (i + 1 < n) host[i + 1] = b;
        }
        for (size_t i = 0; i < n; i++)
            if (zero_row >= 0 && (int64_t)((start + i) / row) == zero_row) host[i] = 0.0f;
        model_param_upload_range(m, p, start, host, n);
    }
}

static bool ends_with(const char *s, const char *suffix) {
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

static void init_lora_param(const model *m, model_param *p, uint64_t seed) {
    if (ends_with(p->name, ".lora_magnitude_vector")) return; /* init_dora_magnitudes */
    if (ends_with(p->name, ".lora_A.weight"))
        init_param(m, p, INIT_UNIFORM, 1.0 / sqrt((double)p->shape[1]), seed, -1);
    else
        init_param(m, p, INIT_ZERO, 0.0, seed, -1);
}

void model_dora_norms(const model *m, const model_linear *lin, float *combined, float *norm, float *scale) {
    const kernels *k = m->k;
    const size_t n = (size_t)lin->out * (size_t)lin->in;
    if (lin->weight->data) {
        k->copy(combined, lin->weight->data, n * sizeof(float));
    } else { /* a frozen base kept only in 16 bits, contiguous: DoRA never fuses (fuses_lora) */
        k->from_half(combined, lin->weight->half, n, model_half_format(m->precision));
    }
    k->gemm(false, false, lin->out, lin->in, m->lora.r, lora_scaling(&m->lora), lin->lora_b->data, m->lora.r,
            lin->lora_a->data, lin->in, 1.0f, combined, lin->in);
    k->dora_norm_scale(norm, scale, combined, lin->magnitude->data, lin->out, lin->in);
}

int model_init_dora(model *m, ct_error *err) {
    if (!m->has_lora || !m->lora.use_dora) return 0;
    size_t numel = 0;
    int out = 0;
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        for (int kind = 0; kind < LINEAR_KIND_COUNT; kind++) {
            const model_linear *lin = &m->layers[l].lin[kind];
            if (!lin->magnitude) continue;
            size_t n = (size_t)lin->out * (size_t)lin->in;
            if (n > numel) numel = n;
            if (lin->out > out) out = lin->out;
        }
    /* once per run, before the reservation exists: scratch of its own */
    float *combined = m->k->alloc(numel * sizeof(float));
    float *norm = m->k->alloc((size_t)out * sizeof(float)), *scale = m->k->alloc((size_t)out * sizeof(float));
    int rc = 0;
    if (!combined || !norm || !scale) {
        rc = ct_fail(err, "model: cannot allocate %zu bytes to start the DoRA magnitudes on the %s backend",
                     (numel + 2 * (size_t)out) * sizeof(float), m->k->name);
    } else {
        for (int l = 0; l < m->cfg.num_hidden_layers && rc == 0; l++)
            for (int kind = 0; kind < LINEAR_KIND_COUNT && rc == 0; kind++) {
                const model_linear *lin = &m->layers[l].lin[kind];
                if (!lin->magnitude) continue;
                if ((rc = model_layer_weights(m, l, err))) break; /* QLoRA: the base's 16-bit values */
                model_dora_norms(m, lin, combined, norm, scale);
                m->k->copy(lin->magnitude->data, norm, (size_t)lin->out * sizeof(float));
            }
    }
    if (combined) m->k->release(combined);
    if (norm) m->k->release(norm);
    if (scale) m->k->release(scale);
    return rc;
}

void model_init_weights(model *m, uint64_t seed) {
    const model_config *c = &m->cfg;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (p->is_lora) {
            init_lora_param(m, p, seed);
        } else if (p->ndim == 1) {
            init_param(m, p, ends_with(p->name, ".bias") ? INIT_ZERO : INIT_ONE, 0.0, seed, -1);
        } else {
            /* nn.Embedding(padding_idx=pad_token_id) starts with a zero padding row. */
            bool embed = strcmp(p->name, "model.embed_tokens.weight") == 0;
            int64_t pad = embed && c->pad_token_id >= 0 && c->pad_token_id < c->vocab_size
                              ? c->pad_token_id : -1;
            init_param(m, p, INIT_NORMAL, c->initializer_range, seed, pad);
        }
    }
    model_weights_changed(m, false);
}

void model_init_lora(model *m, uint64_t seed) {
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].is_lora) init_lora_param(m, &m->params[i], seed);
    model_weights_changed(m, true);
}

/* ---------------------------------------------------------------- loading */

static const char *file_of(const st_model_files *files, const st_tensor *t) {
    for (int i = 0; i < files->n_files; i++)
        if (st_find(&files->files[i], t->name) == t) return files->files[i].path;
    return "?";
}

int model_load_weights(model *m, const char *dir, ct_error *err) {
    st_model_files files;
    memset(&files, 0, sizeof files);
    if (st_model_open(&files, dir, err)) return -1;
    size_t max_numel = 0;
    for (int i = 0; i < m->n_params; i++)
        if (!m->params[i].is_lora && m->params[i].numel > max_numel) max_numel = m->params[i].numel;
    float *host = malloc(max_numel * sizeof(float));
    if (!host) {
        st_model_close(&files);
        return ct_fail(err, "%s: out of memory (%zu bytes) staging weights", dir, max_numel * sizeof(float));
    }
    int status = 0;
    for (int i = 0; i < m->n_params && status == 0; i++) {
        model_param *p = &m->params[i];
        if (p->is_lora) continue;
        const st_tensor *t = st_model_find(&files, p->name);
        if (!t) {
            status = ct_fail(err, "%s: tensor '%s' is missing from the model weights", dir, p->name);
            break;
        }
        bool same = t->ndim == p->ndim && t->shape[0] == p->shape[0] &&
                    (p->ndim == 1 || t->shape[1] == p->shape[1]);
        if (!same) {
            char got[128], want[64];
            st_shape_text(t, got, sizeof got);
            if (p->ndim == 2)
                snprintf(want, sizeof want, "[%lld, %lld]", (long long)p->shape[0], (long long)p->shape[1]);
            else
                snprintf(want, sizeof want, "[%lld]", (long long)p->shape[0]);
            status = ct_fail(err, "%s: tensor '%s' has shape %s but config.json implies %s",
                             file_of(&files, t), p->name, got, want);
            break;
        }
        if (st_read_f32(t, host, err)) {
            status = ct_error_prefix(err, "%s: tensor '%s'", file_of(&files, t), p->name);
            break;
        }
        const size_t bad = p->quantized ? nf4_first_non_finite(host, p->numel) : p->numel;
        if (bad < p->numel) {
            nf4_non_finite_error(err, p->name, (double)host[bad], bad);
            status = ct_error_prefix(err, "%s", file_of(&files, t));
            break;
        }
        model_param_upload_range(m, p, 0, host, p->numel);
    }
    free(host);
    st_model_close(&files);
    model_weights_changed(m, false);
    return status;
}

int model_write_weights(const model *m, const char *path, bool lora, const char *name_prefix,
                        ct_error *err) {
    int n = 0;
    size_t total = 0;
    for (int i = 0; i < m->n_params; i++) {
        if (m->params[i].is_lora != lora) continue;
        if (m->params[i].sharded) /* its fp32 values are spread over the ranks (checkpoint.h) */
            return ct_fail(err, "%s: %s has its fp32 values sharded over the ranks", path, m->params[i].name);
        n++;
        total += m->params[i].numel;
    }
    if (n == 0)
        return ct_fail(err, "%s: the model has no %s to write", path,
                       lora ? "LoRA parameters" : "base weights");
    /* The parameters may live on a device and the writer needs every tensor at once: one
     * host copy of them all. */
    float *host = malloc((total ? total : 1) * sizeof(float));
    st_write_tensor *tensors = calloc((size_t)n, sizeof *tensors);
    char (*names)[sizeof m->params[0].name + 64] = calloc((size_t)n, sizeof *names);
    int rc = -1;
    if (!host || !tensors || !names) {
        ct_fail(err, "%s: out of memory for a host copy of %zu weights", path, total);
        goto done;
    }
    size_t offset = 0;
    int t = 0;
    for (int i = 0; i < m->n_params; i++) {
        const model_param *p = &m->params[i];
        if (p->is_lora != lora) continue;
        if (snprintf(names[t], sizeof names[t], "%s%s", name_prefix, p->name) >= (int)sizeof names[t]) {
            ct_fail(err, "%s: tensor name '%s%s' too long", path, name_prefix, p->name);
            goto done;
        }
        model_param_download(m, p, host + offset);
        tensors[t] = (st_write_tensor){.name = names[t], .dtype = ST_F32, .ndim = p->ndim,
                                       .data = host + offset};
        for (int d = 0; d < p->ndim; d++) tensors[t].shape[d] = p->shape[d];
        offset += p->numel;
        t++;
    }
    const char *meta_key = "format", *meta_value = "pt";
    rc = st_write(path, tensors, n, &meta_key, &meta_value, 1, err);
done:
    free(names);
    free(tensors);
    free(host);
    return rc;
}

/* ---------------------------------------------------------------- activation reservation */

typedef struct cursor {
    float *base; /* NULL while only counting */
    size_t used; /* floats */
} cursor;

/* 64-byte aligned slices, so vectorised kernels never straddle buffers. */
static float *take(cursor *c, size_t n) {
    float *p = c->base ? c->base + c->used : NULL;
    c->used += (n + 15) & ~(size_t)15;
    return p;
}

static int max_int(int a, int b) { return a > b ? a : b; }

/* Rows of one vocabulary-projection chunk: as many as fit the chunk's budget of fp32 logits
 * (at least 256, a multiple of 128). Each chunk's lm_head weight gradient, where the weight
 * is trained, is a GEMM with k = rows that also reads and writes the whole fp32 gradient
 * [V, H]: 256 rows at a 128k vocabulary ran it at 130 TFLOP/s on an H100, 1024 at 490, so
 * full fine-tuning gets twice the budget (2048 rows there: +0.75 GB in mixed precision); a
 * frozen vocabulary weight (LoRA) has no such GEMM, and the smaller chunk keeps its memory. */
enum { LOGITS_CHUNK_BYTES = 512 << 20, LOGITS_CHUNK_BYTES_WEIGHT_GRAD = 1024 << 20 };
static int logits_chunk_rows(int T, int vocab, bool weight_grad) {
    const size_t budget = weight_grad ? LOGITS_CHUNK_BYTES_WEIGHT_GRAD : LOGITS_CHUNK_BYTES;
    size_t fit = budget / ((size_t)(vocab > 0 ? vocab : 1) * sizeof(float));
    int rows = fit < 256 ? 256 : fit > (size_t)INT_MAX ? INT_MAX : (int)(fit / 128 * 128);
    return T < rows ? T : rows;
}

/* One layout for counting (base NULL, acts NULL) and for assigning the pointers. */
static size_t plan_activations(model_state *s, const model_config *c, const lora_settings *lora,
                               int T, bool checkpointing, bool mixed, bool fused, float *base) {
    cursor cur = {base, 0};
    const size_t H = (size_t)c->hidden_size, I = (size_t)c->intermediate_size, t = (size_t)T;
    const size_t nh = (size_t)c->num_attention_heads, nkv = (size_t)c->num_key_value_heads;
    const size_t qdim = nh * (size_t)c->head_dim, kvdim = nkv * (size_t)c->head_dim;
    const int L = c->num_hidden_layers;
    const int rows = logits_chunk_rows(T, c->vocab_size, !lora); /* LoRA freezes the vocabulary weight */
    model_state dummy;
    memset(&dummy, 0, sizeof dummy);
    if (!s) s = &dummy;
    s->resid = take(&cur, (size_t)(L + 1) * t * H);
    /* Backward scratch first: in mixed precision the forward borrows two of its buffers. */
    s->d_resid = take(&cur, t * H);
    s->d_h1 = take(&cur, t * H);
    s->d_h2 = take(&cur, t * H);
    size_t wide = (size_t)max_int(max_int(c->intermediate_size, (int)qdim), c->hidden_size);
    s->d_w1 = take(&cur, t * wide);
    s->d_w2 = take(&cur, t * wide);
    s->d_w3 = take(&cur, t * wide);
    s->d_w4 = take(&cur, t * wide);
    /* Mixed precision keeps gate and up only as their 16-bit roundings (layer_acts.h_gate),
     * as torch.autocast does: their fp32 GEMM outputs live in d_w2 / d_w3 from the GEMM to
     * swiglu_fwd_half, and the MLP's 16-bit gradients there from swiglu_bwd_half to their
     * GEMMs. Both windows are free of the backward's own use of those buffers (a checkpointed
     * layer's forward runs before its backward starts; the fp32 dgate/dup exist only in fp32). */
    float *mlp_gate = mixed ? s->d_w2 : NULL, *mlp_up = mixed ? s->d_w3 : NULL;
    /* Likewise attention's fp32 q, k, v from their GEMMs (and q/k norms) through RoPE to
     * their rounding, in d_w2..d_w4, before gate and up take two of them. */
    float *att_q = mixed ? s->d_w2 : NULL, *att_k = mixed ? s->d_w3 : NULL, *att_v = mixed ? s->d_w4 : NULL;
    s->half_dgate = mixed ? (uint16_t *)s->d_w2 : NULL;
    s->half_dup = mixed ? (uint16_t *)s->d_w3 : NULL;
    /* layer_acts.h_norm1: saved GEMM inputs in 16 bits, written by their producers; their
     * fp32 values are not kept (nothing but those GEMMs reads them). */
    const bool half_inputs = mixed && !(lora && lora->dropout > 0.0f);
    /* Fused LoRA: the 16-bit inputs have room for the adapters' u beside them, the output
     * gradients for du (model_internal.h). */
    model_lora_layout layout;
    model_lora_layout_of(c, fused ? lora : NULL, &layout);
    int in_of[LINEAR_KIND_COUNT], out_of[LINEAR_KIND_COUNT];
    for (int kind = 0; kind < LINEAR_KIND_COUNT; kind++) linear_dims(c, (linear_kind)kind, &in_of[kind], &out_of[kind]);
    const size_t r_room = fused ? (size_t)lora->r : 0;
    memcpy(s->ld_input, layout.ld_input, sizeof s->ld_input);
    s->ld_mlp_dy = layout.ld_mlp_dy;
    for (int l = 0; l < L; l++) {
        layer_acts scratch_acts, *a = s->acts && base ? &s->acts[l] : &scratch_acts;
        if (checkpointing && l > 0) { /* every layer shares layer 0's buffers */
            if (a != &scratch_acts) *a = s->acts[0];
            continue;
        }
        memset(a, 0, sizeof *a);
        if (half_inputs) {
            a->h_norm1 = (uint16_t *)take(&cur, (t * (size_t)layout.ld_input[LINEAR_Q] + 1) / 2);
            a->h_norm2 = (uint16_t *)take(&cur, (t * (size_t)layout.ld_input[LINEAR_GATE] + 1) / 2);
            a->h_act = (uint16_t *)take(&cur, (t * (size_t)layout.ld_input[LINEAR_DOWN] + 1) / 2);
        }
        if (mixed) {
            a->h_gate = (uint16_t *)take(&cur, (t * I + 1) / 2);
            a->h_up = (uint16_t *)take(&cur, (t * I + 1) / 2);
        }
        a->x_norm1 = half_inputs ? NULL : take(&cur, t * H);
        a->rstd1 = take(&cur, t);
        if (c->qk_norm) {
            a->q_pre = take(&cur, t * qdim);
            a->rstd_q = take(&cur, t * nh);
            a->k_pre = take(&cur, t * kvdim);
            a->rstd_k = take(&cur, t * nkv);
        }
        if (mixed) {
            a->h_q = (uint16_t *)take(&cur, (t * qdim + 1) / 2);
            a->h_k = (uint16_t *)take(&cur, (t * kvdim + 1) / 2);
            a->h_v = (uint16_t *)take(&cur, (t * kvdim + 1) / 2);
            a->h_att = (uint16_t *)take(&cur, (t * (size_t)layout.ld_input[LINEAR_O] + 1) / 2);
        }
        a->q = mixed ? att_q : take(&cur, t * qdim);
        a->k = mixed ? att_k : take(&cur, t * kvdim);
        a->v = mixed ? att_v : take(&cur, t * kvdim);
        /* mixed: the fp32 output only for adapter dropout, which drops it before rounding */
        a->att = half_inputs ? NULL : take(&cur, t * qdim);
        a->lse = take(&cur, t * nh);
        a->x_mid = take(&cur, t * H);
        a->x_norm2 = half_inputs ? NULL : take(&cur, t * H);
        a->rstd2 = take(&cur, t);
        a->gate = mixed ? mlp_gate : take(&cur, t * I);
        a->up = mixed ? mlp_up : take(&cur, t * I);
        a->act = half_inputs ? NULL : take(&cur, t * I);
        for (int kind = 0; lora && kind < LINEAR_KIND_COUNT; kind++)
            if (lora->targets[kind]) {
                a->lora_u[kind] = take(&cur, t * (size_t)lora->r);
                if (lora->use_dora) a->dora_z[kind] = take(&cur, t * (size_t)out_of[kind]);
            }
    }
    s->x_norm_final = take(&cur, t * H);
    s->rstd_final = take(&cur, t);
    s->logits = take(&cur, (size_t)rows * (size_t)c->vocab_size);
    s->loss = take(&cur, t);
    s->ones = take(&cur, t);
    if (lora && lora->use_dora) {
        size_t outs = 0, combined = 0;
        for (int kind = 0; kind < LINEAR_KIND_COUNT; kind++)
            if (lora->targets[kind]) {
                outs += (size_t)out_of[kind];
                if ((size_t)out_of[kind] * (size_t)in_of[kind] > combined)
                    combined = (size_t)out_of[kind] * (size_t)in_of[kind];
            }
        s->dora_norms = take(&cur, 2 * (size_t)L * outs); /* a norm and a scale per output row */
        s->dora_combined = take(&cur, combined);
        s->dora_g = take(&cur, t * wide);
        s->dora_dy = take(&cur, t * wide);
    }
    if (lora) {
        s->lora_du = take(&cur, t * (size_t)lora->r);
        /* [T, in] under dropout only: dropout(x) in fp32 and the masked input gradient's product */
        if (lora->dropout > 0.0f) s->lora_scratch = take(&cur, t * wide);
    }
    if (mixed) { /* 16-bit GEMM operands: an input [T, in] and an output gradient or logits chunk */
        /* the widest output gradient with room for du, q, k and v's side by side (their input
         * gradient in one GEMM, model_graph.c), or a logits chunk */
        const size_t wide_dy = t * (wide + r_room), qkv_dy = t * (qdim + 2 * kvdim + 3 * r_room);
        size_t dy = wide_dy > qkv_dy ? wide_dy : qkv_dy;
        if ((size_t)rows * (size_t)c->vocab_size > dy) dy = (size_t)rows * (size_t)c->vocab_size;
        s->half_x = (uint16_t *)take(&cur, (t * (wide + r_room) + 1) / 2);
        s->half_dy = (uint16_t *)take(&cur, (dy + 1) / 2);
        s->half_dy_numel = dy;
        s->half_ones = (uint16_t *)take(&cur, (t + 1) / 2);
        if (lora) { /* the adapters' 16-bit operands (peft/lora_math.h) */
            s->half_lora_r = (uint16_t *)take(&cur, (t * (size_t)lora->r + 1) / 2);
            if (lora->dropout > 0.0f) s->half_lora_in = (uint16_t *)take(&cur, (t * wide + 1) / 2);
        }
    }
    s->logits_rows = rows;
    return cur.used;
}

size_t model_activation_bytes(const model_config *cfg, const lora_settings *lora, int batch, int seq,
                              bool activation_checkpointing, model_precision precision) {
    const bool mixed = precision != MODEL_FP32;
    size_t floats = plan_activations(NULL, cfg, lora, batch * seq, activation_checkpointing, mixed,
                                     lora && mixed && !lora->use_dora, NULL);
    return (floats + 5 * (size_t)batch * (size_t)seq) * sizeof(float);
}

int model_reserve(model *m, int max_batch, int seq, ct_error *err) {
    const model_config *c = &m->cfg;
    if (max_batch <= 0 || seq <= 0) return ct_fail(err, "model_reserve: batch %d and seq %d must be positive", max_batch, seq);
    int widest = max_int(max_int(c->intermediate_size, c->num_attention_heads * c->head_dim), c->hidden_size);
    if ((int64_t)max_batch * seq > INT_MAX / widest)
        return ct_fail(err, "model_reserve: %d x %d tokens is too large for this model", max_batch, seq);
    const int T = max_batch * seq;
    release_reservation(m);
    model_state *s = m->state;
    const lora_settings *lora = m->has_lora ? &m->lora : NULL;
    const bool mixed = m->precision != MODEL_FP32;
    const bool fused = fuses_lora(m, m->precision);
    size_t floats = plan_activations(NULL, c, lora, T, m->activation_checkpointing, mixed, fused, NULL);
    s->acts = calloc((size_t)c->num_hidden_layers, sizeof *s->acts);
    s->host_positions = malloc((size_t)T * sizeof(int32_t));
    s->host_id_keys = malloc((size_t)T * sizeof(uint64_t));
    s->host_loss = malloc((size_t)T * sizeof(float));
    s->float_arena = m->k->alloc(floats * sizeof(float));
    s->int_arena = m->k->alloc(5 * (size_t)T * sizeof(int32_t));
    if (!s->acts || !s->host_positions || !s->host_id_keys || !s->host_loss || !s->float_arena || !s->int_arena) {
        release_reservation(m);
        return ct_fail(err, "model_reserve: cannot allocate %zu bytes of activations for %d x %d tokens on the %s backend",
                       model_activation_bytes(c, lora, max_batch, seq, m->activation_checkpointing,
                                              m->precision),
                       max_batch, seq, m->k->name);
    }
    plan_activations(s, c, lora, T, m->activation_checkpointing, mixed, fused, s->float_arena);
    float *dora_at = s->dora_norms; /* each DoRA Linear's norm and scale, layer by layer */
    for (int l = 0; dora_at && l < c->num_hidden_layers; l++)
        for (int kind = 0; kind < LINEAR_KIND_COUNT; kind++) {
            model_linear *lin = &m->layers[l].lin[kind];
            if (!lin->magnitude) continue;
            lin->dora_norm = dora_at;
            lin->dora_scale = dora_at + lin->out;
            dora_at += 2 * (size_t)lin->out;
        }
    s->ids = s->int_arena;
    s->targets = s->int_arena + T;
    s->positions = s->int_arena + 2 * (size_t)T;
    s->doc_ids = s->int_arena + 3 * (size_t)T;
    s->id_order = s->int_arena + 4 * (size_t)T;
    s->reserved_tokens = T;
    float ones[1024];
    for (int i = 0; i < 1024; i++) ones[i] = 1.0f;
    for (int start = 0; start < T; start += 1024) {
        int n = T - start < 1024 ? T - start : 1024;
        m->k->upload(s->ones + start, ones, (size_t)n * sizeof(float));
    }
    if (mixed) m->k->to_half(s->half_ones, s->ones, (size_t)T, model_half_format(m->precision));
    return 0;
}
