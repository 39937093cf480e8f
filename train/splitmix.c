#include "train/splitmix.h"

#define GOLDEN_GAMMA 0x9e3779b97f4a7c15ull

uint64_t splitmix64(uint64_t x) {
    x += GOLDEN_GAMMA;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t splitmix64_next(uint64_t *state) {
    uint64_t out = splitmix64(*state);
    *state += GOLDEN_GAMMA;
    return out;
}
