/* recipe_schema: private to the recipe module (recipe.c, recipe_schema.c). One table row per
 * recipe key drives parsing, overrides, validation, the writer and docs/recipes.md. */
#ifndef CTUNE_RECIPE_SCHEMA_H
#define CTUNE_RECIPE_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>

#include "train/error.h"
#include "train/recipe.h"

typedef enum { KEY_STRING, KEY_INT, KEY_INT64, KEY_DOUBLE, KEY_BOOL, KEY_ENUM, KEY_LIST } key_type;

typedef struct recipe_key {
    const char *path; /* dotted: "optim.lr" */
    key_type type;
    size_t offset, size;
    size_t count_offset;        /* KEY_LIST: where the entry count lives */
    const char *def;            /* default as YAML text, parsed like any value */
    const char *def_note;       /* shown in the docs when the default is derived */
    long long imin, imax;       /* KEY_INT, KEY_INT64 (inclusive) */
    double dmin, dmax;          /* KEY_DOUBLE */
    bool dmin_open, dmax_open;  /* exclusive bounds */
    const char *const *choices; /* KEY_ENUM (index = value), KEY_LIST items, KEY_STRING (or "") */
    bool required;              /* KEY_STRING must be non-empty */
    const char *doc;
} recipe_key;

/* Keys of one section are contiguous (the writer opens a section when the prefix changes). */
extern const recipe_key SCHEMA_KEYS[];
extern const size_t SCHEMA_N_KEYS;
extern const char SCHEMA_ALL_LINEAR[]; /* the list entry that stands alone */
#define SCHEMA_LIST_ITEM_SIZE sizeof(((recipe *)0)->lora.targets[0])

static inline void *schema_field(recipe *r, const recipe_key *k) {
    return (char *)r + k->offset;
}
static inline const void *schema_cfield(const recipe *r, const recipe_key *k) {
    return (const char *)r + k->offset;
}

const recipe_key *schema_find(const char *path);
bool schema_is_section(const char *path);
/* "unknown key 'x' (did you mean 'y'?)" or the list of keys valid where x was written. */
int schema_unknown_key(const char *path, ct_error *err);
int schema_choice_index(const char *const *choices, const char *s);
bool schema_is_null_word(const char *s);
/* Shortest round-trip text of v, always with a '.' ("1.0e-08"). */
void schema_format_double(double v, char *buf, size_t size);
/* "an integer", "one of lora, full", ... */
void schema_expected(const recipe_key *k, char *buf, size_t size);

/* Sets a field from scalar text (plain: unquoted in the YAML). Messages name the key, not
 * the place; the caller prefixes file:line or the override. */
int schema_set_scalar(recipe *r, const recipe_key *k, const char *text, size_t len, bool plain,
                      ct_error *err);
/* Checks list entry `item` against the n_prev entries before it (names, duplicates, all-linear). */
int schema_check_list_item(const recipe_key *k, const char *item, const char *const *prev,
                           int n_prev, ct_error *err);
void schema_store_list(recipe *r, const recipe_key *k, const char *const *items, int n);
/* Checks a field's current value against its row (ranges, choices, required). */
int schema_check_value(const recipe *r, const recipe_key *k, ct_error *err);

#endif
