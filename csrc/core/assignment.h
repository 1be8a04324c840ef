// Exact minimum-cost assignment of n rows to n columns on integer costs: the
// Hungarian method as successive shortest augmenting paths with potentials,
// O(n^3). Integer arithmetic only, so every device computes the same answer.
//
// It starts from the row and then column reductions (potentials u[i] = the
// row's smallest cost, v[j] = the column's smallest reduced cost) and a
// greedy matching on zero reduced costs (rows in order, each taking its
// first free such column); when most rows have a clear best column, as in
// relabeling, few rows are left to augment. Which optimum it returns when
// several exist is fixed by that order and by the augmenting searches: the
// unmatched rows enter in ascending order, and each search extends to the
// unvisited column with the smallest reduced distance, the lowest column
// index on ties. Callers that want a particular optimum among equals add a
// small secondary term to the costs (relabel.h does).
#pragma once

#include "hd.h"

namespace eplb {

struct AssignScratch {
  int64_t* u;     // n + 1  row potentials (1-based)
  int64_t* v;     // n + 1  column potentials (column 0: the virtual start)
  int64_t* minv;  // n + 1
  int32_t* p;     // n + 1  row matched to each column
  int32_t* way;   // n + 1  previous column on the augmenting path
  int32_t* row;   // n + 1  column matched to each row (0: none)
  uint8_t* used;  // n + 1
};

EPLB_HD AssignScratch take_assign_scratch(Carver& c, int64_t n) {
  AssignScratch s;
  s.u = c.take<int64_t>(n + 1);
  s.v = c.take<int64_t>(n + 1);
  s.minv = c.take<int64_t>(n + 1);
  s.p = c.take<int32_t>(n + 1);
  s.way = c.take<int32_t>(n + 1);
  s.row = c.take<int32_t>(n + 1);
  s.used = c.take<uint8_t>(n + 1);
  return s;
}

// cost[r * n + c] >= 0; writes row_col[r] = the column given to row r and
// returns the total cost. Costs must keep n * max(cost) within int64.
EPLB_HD int64_t assign_min_cost(const int64_t* cost, int32_t n, int32_t* row_col, AssignScratch s) {
  const int64_t inf = (int64_t)1 << 62;
  for (int32_t j = 0; j <= n; ++j) {
    s.u[j] = 0;
    s.v[j] = 0;
    s.p[j] = 0;
    s.way[j] = 0;
    s.row[j] = 0;
  }
  for (int32_t i = 1; i <= n; ++i) {
    const int64_t* c = cost + (int64_t)(i - 1) * n;
    int64_t m = inf;
    for (int32_t j = 0; j < n; ++j) m = m < c[j] ? m : c[j];
    s.u[i] = m;
  }
  for (int32_t j = 1; j <= n; ++j) {
    int64_t m = inf;
    for (int32_t i = 1; i <= n; ++i) {
      const int64_t r = cost[(int64_t)(i - 1) * n + (j - 1)] - s.u[i];
      m = m < r ? m : r;
    }
    s.v[j] = m;
  }
  for (int32_t i = 1; i <= n; ++i) {
    for (int32_t j = 1; j <= n; ++j) {
      if (s.p[j] == 0 && cost[(int64_t)(i - 1) * n + (j - 1)] - s.u[i] - s.v[j] == 0) {
        s.p[j] = i;
        s.row[i] = j;
        break;
      }
    }
  }
  for (int32_t i = 1; i <= n; ++i) {
    if (s.row[i] != 0) continue;
    s.p[0] = i;
    int32_t j0 = 0;
    for (int32_t j = 0; j <= n; ++j) {
      s.minv[j] = inf;
      s.used[j] = 0;
    }
    do {
      s.used[j0] = 1;
      const int32_t i0 = s.p[j0];
      int64_t delta = inf;
      int32_t j1 = 0;
      for (int32_t j = 1; j <= n; ++j) {
        if (s.used[j]) continue;
        const int64_t cur = cost[(int64_t)(i0 - 1) * n + (j - 1)] - s.u[i0] - s.v[j];
        if (cur < s.minv[j]) {
          s.minv[j] = cur;
          s.way[j] = j0;
        }
        if (s.minv[j] < delta) {
          delta = s.minv[j];
          j1 = j;
        }
      }
      for (int32_t j = 0; j <= n; ++j) {
        if (s.used[j]) {
          s.u[s.p[j]] += delta;
          s.v[j] -= delta;
        } else {
          s.minv[j] -= delta;
        }
      }
      j0 = j1;
    } while (s.p[j0] != 0);
    do {
      const int32_t j1 = s.way[j0];
      s.p[j0] = s.p[j1];
      j0 = j1;
    } while (j0 != 0);
  }
  int64_t total = 0;
  for (int32_t j = 1; j <= n; ++j) {
    row_col[s.p[j] - 1] = j - 1;
    total += cost[(int64_t)(s.p[j] - 1) * n + (j - 1)];
  }
  return total;
}

}  // namespace eplb
