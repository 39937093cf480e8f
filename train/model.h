/* model: the Llama-family model — config.json, the named parameter list derived from it,
 * loading weights from a Hugging Face folder, and the forward/backward pass of
 * LlamaForCausalLM (with Qwen2 q/k/v biases and Qwen3 q/k norms) on any kernels backend.
 *
 * Every parameter is a named view into one contiguous arena (weights) and, when trainable,
 * into one gradient arena, so an optimizer or collective covers all of them at once (or, with
 * gradient buckets, into two buffers the layers take turns with: model_layout).
 * LoRA adapters (peft/lora.h) are parameters too, named as transformers names the module
 * plus ".lora_A.weight" / ".lora_B.weight" (without peft's "base_model.model." prefix).
 * Activations and scratch are allocated once by model_reserve; nothing is allocated per step.
 * Does not own: optimizer state, file layout of checkpoints (checkpoint.h, peft/lora.h). */
#ifndef CTUNE_MODEL_H
#define CTUNE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"
#include "peft/lora.h"
#include "train/error.h"

#define MODEL_MAX_EOS 8

typedef enum { ROPE_SCALING_NONE, ROPE_SCALING_LLAMA3 } rope_scaling_type;

typedef struct model_config {
    char model_type[32];       /* llama, mistral, qwen2, qwen3 */
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads;   /* default num_attention_heads */
    int head_dim;              /* default hidden_size / num_attention_heads */
    int max_position_embeddings;
    double rms_norm_eps;
    double rope_theta;
    rope_scaling_type rope_scaling;
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_position_embeddings;
    bool tie_word_embeddings;
    bool attention_bias;       /* q/k/v (and o for llama) biases; qwen2: q/k/v only */
    bool o_proj_bias;
    bool mlp_bias;
    bool qk_norm;              /* qwen3 */
    double initializer_range;  /* default 0.02 */
    int bos_token_id;          /* -1 if absent */
    int n_eos;
    int eos_token_ids[MODEL_MAX_EOS];
    int pad_token_id;          /* -1 if absent */
    char torch_dtype[16];      /* "float32", "bfloat16", "float16" */
    void *raw_json;            /* cJSON* of the file read (kept so unknown keys survive a rewrite) */
} model_config;

/* Reads config.json; errors name the file and key. Accepts rope_parameters or legacy keys. */
int model_config_load(model_config *cfg, const char *path, ct_error *err);
/* Built-in configs: "tiny" (the default job's model), "bench-20m" (benchmark size). */
int model_config_preset(model_config *cfg, const char *preset, ct_error *err);
/* Writes config.json (legacy rope_theta/rope_scaling keys; unknown keys of a loaded file kept). */
int model_config_write(const model_config *cfg, const char *path, ct_error *err);
void model_config_free(model_config *cfg);
/* inv_freq[head_dim/2] with llama3 scaling applied, fp32 as transformers computes it. */
void model_rope_inv_freq(const model_config *cfg, float *inv_freq);

/* Compute precision of the GEMMs. Mixed: every Linear (and the vocabulary projection) runs
 * on 16-bit copies of its weight and of its input / output gradient, with fp32 products
 * and sums into fp32 outputs (kernels.gemm_half); everything else, the saved activations,
 * the gradients and the weights themselves (the optimizer's master copy) stay fp32.
 * LoRA adapters keep fp32 masters and gradients; their products take 16-bit operands too
 * (peft/lora_math.h), as peft's adapters under torch.autocast. */
typedef enum { MODEL_FP32, MODEL_BF16_MIXED, MODEL_FP16_MIXED } model_precision;

typedef struct model_param {
    char name[192];   /* transformers name, e.g. "model.layers.0.self_attn.q_proj.weight" */
    int ndim;         /* 1 or 2 */
    int64_t shape[2]; /* [out, in] for Linear weights */
    size_t numel;
    float *data;      /* backend memory; NULL for a frozen Linear weight or lm_head in mixed
                       * precision, whose 16-bit copy (half) is then the only one */
    float *grad;      /* backend memory; NULL when frozen */
    bool trainable;
    bool decay;       /* weight decay applies (2-D weights; not norms, biases) */
    bool is_lora;
    uint16_t *half;   /* backend: the 16-bit copy mixed-precision GEMMs read (a Linear weight,
                       * lm_head or a tied embedding); NULL in fp32 and for other parameters,
                       * and for LoRA adapters whose copies live inside their base weight's */
    int half_ld;      /* row stride of half: shape[1], or wider for a base weight that carries
                       * its adapter's copies (half_rows x half_ld; model_internal.h) */
    int64_t half_rows;
    bool grad_stale;  /* grad holds old values that count as zero (model_zero_grads): its
                       * first writer in model_step overwrites instead of adding */
    size_t flat;      /* trainable: the flat index of its first value (the order of the trainable
                       * parameters: ZeRO's shards, AdamW's ranges, the training state) */
    int layer;        /* the decoder layer it belongs to; -1 outside the layers */
    /* A weight whose fp32 values are sharded over the ranks (model_create_in with a shard):
     * data is NULL, half holds every value on every rank, and this rank keeps fp32 only for
     * the values [master_lo, master_hi) of p that its ZeRO shard updates, at master (NULL
     * when that is empty). */
    bool sharded;
    float *master;
    size_t master_lo, master_hi;
    /* ZeRO 3 (model_layout.gather_layers): a sharded weight of a decoder layer whose 16-bit
     * copy is not kept either: half points into the layer weight buffer its layer takes
     * turns with (model.layer_halves), valid only while model_layer_weights put it there. */
    bool gathered;
    /* QLoRA (model_layout.nf4_base): a frozen Linear weight of a decoder layer kept only as
     * NF4 codes and block absmaxes (kernels/nf4.h; backend memory in model.nf4_arena). Like a
     * gathered weight its half points into its layer's buffer, which model_layer_weights
     * fills by reading the codes back (kernels.nf4_to_half_2d) before a pass reads the layer. */
    bool quantized;
    uint8_t *nf4_codes;
    float *nf4_absmax;
} model_param;

/* A ZeRO shard: the flat trainable values [begin, end) (the order of grad_arena) a rank updates. */
typedef struct model_shard {
    size_t begin, end;
} model_shard;

/* One micro-batch, host memory. targets[t] < 0 means "no loss here". positions restart at 0
 * per sequence (or per packed document); doc_ids may be NULL (one document per row). */
typedef struct model_batch {
    const int32_t *input_ids; /* [batch*seq] */
    const int32_t *targets;   /* [batch*seq] */
    const int32_t *positions; /* [batch*seq] */
    const int32_t *doc_ids;   /* [batch*seq] or NULL */
    int batch;
    int seq;
} model_batch;

typedef struct model_layer model_layer; /* internal pointers into the arenas */
typedef struct model model;

/* Called by model_step's backward once decoder layer `layer`'s gradients are final, for every
 * layer from the last down to 0, in every model_step with the backward pass (also when it
 * computes nothing: zeros then), so every rank makes the same calls. grads holds the layer's
 * flat trainable values [lo, hi) (lo == hi: it trains nothing). A failure stops the step. */
typedef int (*model_grads_ready_fn)(void *ctx, model *m, int layer, size_t lo, size_t hi, const float *grads,
                                    ct_error *err);

/* ZeRO 3: called before a pass reads decoder layer `layer`'s gathered weights (model_param.
 * gathered) when their buffer does not hold them: the callback fills the layer's 16-bit
 * copies (zero_gather_layer all-gathers them from the ranks' shards). The calls depend only
 * on the sequence of passes (each forward asks for layers 0 .. L-1, each backward for L-1 ..
 * 0, whatever the batch holds), so ranks that make the same passes make the same calls. */
typedef int (*model_layer_weights_fn)(void *ctx, model *m, int layer, ct_error *err);

struct model {
    model_config cfg;
    const kernels *k;
    bool has_lora;
    lora_settings lora;
    int n_params;
    model_param *params;
    float *weight_arena;  /* all parameters, contiguous; the trainable ones first, in parameter
                           * order, so weight_arena[i] and grad_arena[i] match for i < grad_numel
                           * (not with sharded weights, which are not in it) */
    float *grad_arena;    /* all trainable gradients, contiguous, in parameter order (NULL with
                           * gradient buckets) */
    size_t weight_numel, grad_numel; /* grad_numel: every trainable value */
    /* Gradient buckets (model_layout.grad_buckets): the gradients outside the decoder layers
     * (in flat order), then two layer-sized buckets, layer l's gradients in bucket l % 2. A
     * layer's gradients live only until grads_ready has taken them (ZeRO 2 reduce-scatters
     * them into the shard), so the backward holds ~2/L of a full gradient arena. */
    bool grad_buckets;
    float *grad_held;     /* backend: the outside gradients, then the buckets */
    size_t grad_held_numel, grad_bucket_numel;
    model_grads_ready_fn grads_ready; /* NULL: not called (required with buckets) */
    void *grads_ready_ctx;
    model_layer *layers;
    void *state;          /* activations, scratch, rope tables: owned by model.c */
    /* Keep only each layer's input and recompute the layer's activations in the backward
     * pass (one layer's worth of memory instead of all of them, ~1 extra forward). The
     * gradients are the same bits either way. Set before model_reserve. */
    bool activation_checkpointing;
    /* Mixed-precision LoRA runs each adapter inside its base Linear's GEMMs (model_internal.h);
     * true keeps the adapters' products separate (the reference the fused form is tested
     * against). Set before model_set_precision. */
    bool lora_unfused;
    model_precision precision; /* model_set_precision; MODEL_FP32 after model_create */
    uint16_t *half_arena;      /* backend: every param's 16-bit copy (mixed precision only) */
    size_t half_numel;
    kernels_half_block *adapter_casts; /* backend: A and scaling * B of every fused adapter */
    int n_adapter_casts;               /* into its base weight's copy (to_half_2d_many) */
    bool half_stale_frozen;    /* copies of frozen / trainable weights need refreshing from */
    bool half_stale_trainable; /* the fp32 weights before the next GEMM (model_weights_changed) */
    size_t half_fresh_begin;   /* ... except the trainable values [begin, end) (flat index as */
    size_t half_fresh_end;     /* grad_arena), written by the optimizer itself */
    float *master_arena;       /* backend: the sharded weights' fp32 slices, in flat order */
    size_t master_numel;
    /* ZeRO 3 (model_layout.gather_layers): the decoder layers' weights have no 16-bit copy of
     * their own; the half arena holds the rest's copies, then two buffers of one layer's
     * (layer_halves[0], [1]: layer l's in l % 2, at their offsets in the layer), filled by
     * layer_weights before a pass reads them. layer_held[b]: the layer buffer b holds, -1
     * for none (a step's update makes both stale). */
    bool gather_layers;
    uint16_t *layer_halves[2];
    size_t layer_half_numel;
    int layer_held[2];
    model_layer_weights_fn layer_weights; /* required with gather_layers */
    void *layer_weights_ctx;
    /* QLoRA (model_layout.nf4_base): the decoder layers' frozen Linear weights are held as
     * NF4 (model_param.quantized): codes then absmaxes, nf4_bytes of backend memory, read
     * back into the layer buffers above (layer_halves, layer_held) one layer at a time. */
    bool nf4_base;
    uint8_t *nf4_arena;
    size_t nf4_bytes;
};

/* Switches the GEMMs to precision p: allocates (or frees) the 16-bit weight copies, rounded
 * from the current weights. In mixed precision the frozen GEMM weights (a LoRA base) keep
 * only their 16-bit copy (their fp32 memory is freed; going back to fp32 widens them).
 * Call before model_reserve (the reservation holds 16-bit scratch in mixed precision). */
int model_set_precision(model *m, model_precision p, ct_error *err);
/* Tells the model its fp32 weights changed outside model.c (an optimizer step, a loaded
 * training state): the 16-bit copies of the trainable weights (or of all, when
 * trainable_only is false) are refreshed before the next forward. No-op in fp32. */
void model_weights_changed(model *m, bool trainable_only);
/* The same for the trainable weights, where the copies of the values [begin, end) (flat
 * trainable index, as grad_arena) were already written with the update (AdamW does it): only
 * the rest is re-rounded. */
void model_weights_changed_except(model *m, size_t begin, size_t end);
/* A parameter's values as fp32 in host memory [numel] (widened from 16 bits where the
 * parameter has no fp32 data). Use it rather than p->data for frozen weights. A sharded
 * weight's are its 16-bit copy widened, not its fp32 values (zero_fetch_param gathers those);
 * a gathered one (ZeRO 3) has no copy to widen outside its layer's turn: fetch it. A
 * quantized one's (QLoRA) are its NF4 read-back in fp32 (kernels/nf4.h: nf4_dequantize). */
void model_param_download(const model *m, const model_param *p, float *host);
/* Sets a parameter from fp32 host values [numel] (rounded to 16 bits where it has no fp32
 * data). Call model_weights_changed afterwards for weights that do have a 16-bit copy. */
void model_param_upload(const model *m, model_param *p, const float *host);
/* The same for the values [offset, offset + n) of p (row-major). A sharded weight's are
 * rounded into its 16-bit copy, and those of this rank's slice kept in fp32 too. A quantized
 * weight's (QLoRA) are quantized to NF4: offset a multiple of NF4_BLOCK (64), and n whole
 * blocks or the rest of the weight (kernels/nf4.h). */
void model_param_upload_range(const model *m, model_param *p, size_t offset, const float *host, size_t n);
/* The 16-bit format of a mixed precision (KERNELS_BF16 for MODEL_FP32, where none is used). */
kernels_half_format model_half_format(model_precision p);

/* Builds the parameter list from the config (+ LoRA adapters when lora != NULL; then only
 * adapters are trainable, otherwise every parameter is). Weights start at zero. */
int model_create(model *m, const model_config *cfg, const lora_settings *lora,
                 const kernels *k, ct_error *err);
void model_free(model *m);
/* model_create, then model_set_precision(p), except that the fp32 values precision p drops (a
 * mixed-precision LoRA base, a frozen embedding table) are never allocated: start-up holds no
 * more than the run does (an fp32 copy of an 8B base beside its 16-bit one is 48 GB, twice
 * what the run needs).
 * With shard (mixed precision only; NULL: none), the fp32 values of the shardable weights
 * (model_param_shardable) are kept only for the values of the shard: the rest of each lives
 * in its 16-bit copy alone (docs/distributed.md). Such a model cannot change precision. */
int model_create_in(model *m, const model_config *cfg, const lora_settings *lora, const kernels *k,
                    model_precision precision, const model_shard *shard, ct_error *err);
/* model_create_in's choices, plus gradient buckets (model.grad_buckets): how
 * model_create_as lays the model out. */
typedef struct model_layout {
    model_precision precision;
    const model_shard *shard; /* as model_create_in's; NULL: none */
    bool grad_buckets;        /* the backward's gradients in two layer buckets (model.grad_buckets) */
    bool gather_layers;       /* ZeRO 3: the layers' 16-bit weights gathered layer by layer
                               * (model.gather_layers); needs a shard and mixed precision */
    bool nf4_base;            /* QLoRA: the layers' frozen Linear weights held in 4 bits (NF4)
                               * and read back layer by layer (model.nf4_base); needs LoRA and
                               * mixed precision, not gather_layers */
} model_layout;
int model_create_as(model *m, const model_config *cfg, const lora_settings *lora, const kernels *k,
                    const model_layout *layout, ct_error *err);
/* Whether p's fp32 values can be sharded in precision p: a trainable GEMM weight read only
 * through its 16-bit copy (every Linear, an untied lm_head); not LoRA adapters (small, and
 * fused into their base's copy) nor the embedding table (its lookup reads fp32 rows). */
bool model_param_shardable(const model *m, const model_param *p, model_precision precision);
/* Whether a tensor of a Hugging Face Llama-family checkpoint is one QLoRA holds in 4 bits: a
 * decoder layer's Linear weight (2-D, under "model.layers.", not a LoRA adapter), as
 * bitsandbytes quantizes every Linear of the layers (the embedding and lm_head stay 16-bit).
 * The model, ctune merge --quantize-base and the tests pick the same tensors by it. */
bool model_nf4_quantizes(const char *name, int ndim);
/* Trainable values of the model cfg (+ lora) would have: for shard boundaries before it exists. */
size_t model_trainable_numel(const model_config *cfg, const lora_settings *lora, ct_error *err);
/* fp32 values the model would hold created in its precision with shard (NULL: none): the
 * estimate of another rank's parameters. */
size_t model_fp32_numel(const model *m, const model_shard *shard);
/* Whether m has weights whose fp32 values are sharded (model_create_in with a shard). */
bool model_weights_sharded(const model *m);
/* The decoder layers' flat trainable range [*lo, *hi): the values before it (the embedding
 * table) and after it (the final norm, lm_head) lie outside the layers. */
void model_layers_flat_range(const model *m, size_t *lo, size_t *hi);
/* ZeRO 3 and QLoRA: makes layer's gathered or quantized weights present in its layer buffer
 * (model.layer_weights, or reading back the NF4 codes and casting the layer's fused adapters,
 * when the buffer holds another layer). model_step and model_logits call it; so does
 * model_pass_weights. No-op for other models. */
int model_layer_weights(model *m, int layer, ct_error *err);
/* ZeRO 3: the calls of one forward pass (layers 0 .. L-1) without computing anything, for a
 * rank that has no batch while the others run a forward (evaluation: every rank must make
 * the same collective calls). No-op without gather_layers. */
int model_pass_weights(model *m, ct_error *err);
/* Where p's fp32 value i is: in data, or (sharded) in this rank's slice, which must hold it. */
float *model_param_fp32(const model_param *p, size_t i);

/* transformers' initialisation: Linear/Embedding ~ N(0, initializer_range), norms = 1,
 * biases = 0; LoRA A kaiming-uniform(a=sqrt(5)) i.e. U(-1/sqrt(in), 1/sqrt(in)), B = 0.
 * Deterministic from seed. */
void model_init_weights(model *m, uint64_t seed);
/* Re-initialises only the LoRA adapters (peft's default), deterministic from seed. */
void model_init_lora(model *m, uint64_t seed);
/* DoRA (lora.use_dora): sets every magnitude to ||W + scaling B A|| per output row of the
 * current weights, as peft starts it (call after the base is loaded and the adapters
 * initialised: with B = 0 that is the norms of W's rows). No-op without DoRA. */
int model_init_dora(model *m, ct_error *err);
/* Loads every base weight from a folder (model.safetensors or shards), any of F32/BF16/F16;
 * a missing tensor or a shape mismatch is an error naming both. */
int model_load_weights(model *m, const char *dir, ct_error *err);
/* Writes the base weights (lora false) or the LoRA adapters (lora true) to one fp32
 * safetensors file with metadata {"format": "pt"}, each tensor named name_prefix + its
 * parameter name. */
int model_write_weights(const model *m, const char *path, bool lora, const char *name_prefix,
                        ct_error *err);

model_param *model_find_param(model *m, const char *name);
size_t model_count_params(const model *m, bool trainable_only);

/* Allocates activations for micro-batches up to max_batch x seq. Call once before steps.
 * The reservation is in tokens: any batch with batch*seq <= max_batch*seq fits. Calling it
 * again replaces the previous reservation. */
int model_reserve(model *m, int max_batch, int seq, ct_error *err);
/* Bytes model_reserve would allocate (for --dry-run memory estimates). */
size_t model_activation_bytes(const model_config *cfg, const lora_settings *lora, int batch, int seq,
                              bool activation_checkpointing, model_precision precision);

/* Zeroes every gradient, lazily: each is marked stale, and its first writer in the next
 * model_step overwrites it (a GEMM with beta 0, where the whole matrix is one product) instead
 * of adding to zeros; model_step zeroes what it did not write before it returns. Spares a
 * pass over the gradient arena each micro-batch (5 GB at Llama-3.2-1B in full fine-tuning);
 * the bits are those of eager zeroing. Read the arena after model_step, or after
 * model_settle_grads. */
void model_zero_grads(model *m);
/* Zeroes the gradients still stale (one zero call per run of neighbours in the arena). */
void model_settle_grads(model *m);

/* Forward pass; when backward, also the backward pass, ACCUMULATING into the gradients (a
 * stale gradient counts as zero: model_zero_grads)
 * d(loss_sum * grad_scale)/dparam. LoRA dropout is active only when backward is true, its
 * mask drawn from dropout_seed (kernels->dropout). Returns the sum of token losses over
 * tokens with targets >= 0 and their count. backward with grad_scale 0 runs the training
 * forward (dropout on) and leaves the gradients untouched. targets may be NULL (no loss),
 * positions NULL (0..seq-1 in every row). Fails if batch*seq exceeds the reservation or an
 * id is outside the vocabulary, or when grads_ready fails (the step stops there). With
 * gradient buckets the layers' gradients are grads_ready's to take: they do not accumulate
 * over model_steps (the outside ones do). */
int model_step(model *m, const model_batch *batch, bool backward, float grad_scale,
               uint64_t dropout_seed, double *loss_sum, long *n_loss_tokens, ct_error *err);

/* Micro-batches whose losses the host reads once per step, not once per micro-batch: on a
 * GPU every read waits for the device, and the step has others to wait for anyway (the
 * gradient norm, the optimizer). model_reserve_loss_slots allocates n_slots device slots of
 * tokens_per_slot losses (once; again only to change the sizes). model_step_queued is
 * model_step with the backward pass, except that the per-token losses are copied to slot
 * `slot` on the device, no wait; model_collect_losses fetches slots [0, n_slots) in one
 * download (it waits for all the work queued so far) and returns each slot's loss sum,
 * the same double sum in the same order as model_step's loss_sum (the same bits). */
int model_reserve_loss_slots(model *m, int n_slots, int tokens_per_slot, ct_error *err);
int model_step_queued(model *m, const model_batch *batch, float grad_scale, uint64_t dropout_seed, int slot,
                      long *n_loss_tokens, ct_error *err);
/* With scalar not NULL, the same download also fetches the double at model_loss_slots_scalar
 * into *scalar: the optimizer leaves the step's gradient norm there (optim/zero.h:
 * zero_step_queued), so one wait a step brings both. */
void model_collect_losses(model *m, int n_slots, double *sums, double *scalar);
/* One double of backend memory beside the loss slots (zero until written; NULL before
 * model_reserve_loss_slots). */
double *model_loss_slots_scalar(model *m);

/* Logits (host memory, [vocab]) of the last token of one sequence ids[0..n-1] (positions
 * 0..n-1), no dropout. Re-runs the whole sequence (generation uses model_cache_append);
 * grows the reservation to 1 x n when it holds fewer tokens (an allocation, so keep it out of
 * the training step loop, or reserve enough up front). */
int model_last_logits(model *m, const int32_t *ids, int n, float *logits, ct_error *err);
/* The same for every position from first to n-1 (one forward pass): logits is host memory
 * [n - first, vocab]. */
int model_logits(model *m, const int32_t *ids, int n, int first, float *logits, ct_error *err);

/* Generation with a KV cache: each layer's keys and values (after RoPE; fp32, or the 16-bit
 * values attention reads in mixed precision) are kept for the tokens seen so far, so a new
 * token costs one token's forward instead of the whole sequence's.
 * model_cache_reserve allocates room for a sequence of up to capacity tokens (backend memory:
 * 2 x layers x capacity x kv heads x head_dim values; kept when it is large enough) and empties
 * it; model_cache_reset empties it for a new sequence; model_cache_append runs ids[0..n) at
 * the positions after the cached ones, caches their keys and values, and writes the logits of
 * the last of them (host memory [vocab]). The first tokens of a sequence run exactly as
 * model_last_logits does (the same bits); later ones agree with it to rounding
 * (kernels.h: attention_cached). model_cache_release frees the cache (model_free does too).
 * The weights must not change while the cache holds a sequence: its keys and values, and
 * DoRA's column scales (computed once, by the sequence's first append), come from them;
 * model_cache_reset before using changed weights. */
int model_cache_reserve(model *m, int capacity, ct_error *err);
void model_cache_reset(model *m);
/* Keeps the first len cached tokens (fewer than it holds; else nothing changes): a sequence
 * that shares only a prefix with the cached one continues from there. */
void model_cache_truncate(model *m, int len);
int model_cache_append(model *m, const int32_t *ids, int n, float *logits, ct_error *err);
void model_cache_release(model *m);

#endif
