#pragma once
// Loop-unrolling pragmas as statements, so that clang-format indents them with the loop they
// precede (a bare `#pragma` is a preprocessor line and goes to column 0).
#define DG_MOE_UNROLL _Pragma("unroll")
#define DG_MOE_NO_UNROLL _Pragma("unroll 1")
#define DG_MOE_UNROLL_4 _Pragma("unroll 4")
#define DG_MOE_UNROLL_8 _Pragma("unroll 8")
