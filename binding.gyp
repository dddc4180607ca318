# The addon is built from source on install. Kernels for each instruction set live in their own
# static library, compiled with that set's flags, and are chosen at run time (native/core/cpu.cpp),
# so one build runs on any x86-64 machine. Kernel files are found by their suffix, so adding a
# kernel never needs an edit here. The MPI addon (tierlm_mpi, native/mpi/) is built only when
# OpenMPI's development files are present (native/mpi/probe.mjs); without them nothing changes.
{
  "variables": {
    "with_mpi": "<!(node native/mpi/probe.mjs)"
  },
  "target_defaults": {
    "cflags_cc!": ["-fno-exceptions", "-O0", "-O1", "-O2"],
    "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-fno-math-errno", "-Wall", "-Wno-unused-function"],
    "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "native"],
    "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"]
  },
  "targets": [
    {
      "target_name": "kernels_avx512",
      "type": "static_library",
      "sources": ["<!@(ls -1 native/kernels/*_avx512.cpp 2>/dev/null || true)"],
      "cflags_cc": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mavx512vnni", "-mavx2", "-mfma", "-mf16c", "-fPIC"]
    },
    {
      "target_name": "kernels_avx2",
      "type": "static_library",
      "sources": ["<!@(ls -1 native/kernels/*_avx2.cpp 2>/dev/null || true)"],
      "cflags_cc": ["-mavx2", "-mfma", "-mf16c", "-fPIC"]
    },
    {
      "target_name": "tierlm",
      "dependencies": ["kernels_avx512", "kernels_avx2"],
      "sources": [
        "<!@(ls -1 native/core/*.cpp)",
        "<!@(ls -1 native/napi/*.cpp)",
        "<!@(ls -1 native/io/*.cpp)",
        "<!@(ls -1 native/kernels/*_scalar.cpp native/kernels/*_generic.cpp 2>/dev/null || true)"
      ],
      "cflags_cc": ["-fPIC", "-pthread"],
      "ldflags": ["-pthread"]
    }
  ],
  "conditions": [
    ["with_mpi==1", {
      "targets": [
        {
          "target_name": "tierlm_mpi",
          "sources": ["native/mpi/mpi_addon.cpp"],
          "defines": ["OMPI_SKIP_MPICXX=1"],
          "cflags_cc": ["-fPIC", "-pthread", "<!@(node native/mpi/probe.mjs cflags)"],
          "ldflags": ["-pthread"],
          "libraries": ["<!@(node native/mpi/probe.mjs libs)", "-ldl"]
        }
      ]
    }]
  ]
}
