// A winner tree: the first best of n leaves, kept up to date in O(log n) per
// changed leaf (packing and replication pick with it).
#pragma once

#include "hd.h"

namespace eplb {

// A winner tree over leaves 0 .. n2-1 (n2 a power of two): win[x] is the
// winning leaf of inner node x (1 .. n2-1). beats(r, l) says whether leaf r
// of a right subtree strictly beats leaf l of the left one; the left leaf,
// with the lower index, wins otherwise, so the root holds the first best
// leaf (the tie rule). Changing one leaf costs O(log n2).
template <typename Beats>
struct WinnerTree {
  int32_t* win;
  int32_t n2;
  Beats beats;

  EPLB_HD int32_t winner(int32_t x) const { return x >= n2 ? x - n2 : win[x]; }
  EPLB_HD void fix(int32_t x) {
    const int32_t l = winner(2 * x), r = winner(2 * x + 1);
    win[x] = beats(r, l) ? r : l;
  }
  EPLB_HD void build() {
    for (int32_t x = n2 - 1; x >= 1; --x) fix(x);
  }
  EPLB_HD void update(int32_t leaf) {
    for (int32_t x = (leaf + n2) >> 1; x >= 1; x >>= 1) fix(x);
  }
  EPLB_HD int32_t top() const { return n2 == 1 ? 0 : win[1]; }
};

template <typename Beats>
EPLB_HD WinnerTree<Beats> make_winner_tree(int32_t* win, int32_t n, Beats beats) {
  return WinnerTree<Beats>{win, next_pow2(n), beats};
}

}  // namespace eplb
