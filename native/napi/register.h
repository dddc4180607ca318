#pragma once
#include <napi.h>

namespace tierlm {
void register_core(Napi::Env env, Napi::Object exports);       // napi/core.cpp
void register_gemm(Napi::Env env, Napi::Object exports);       // napi/gemm.cpp
void register_rowwise(Napi::Env env, Napi::Object exports);    // napi/rowwise.cpp
void register_attention(Napi::Env env, Napi::Object exports);  // napi/attention.cpp
void register_io(Napi::Env env, Napi::Object exports);         // napi/io.cpp
void register_lock(Napi::Env env, Napi::Object exports);       // napi/lock.cpp
void register_grad(Napi::Env env, Napi::Object exports);       // napi/grad.cpp
void register_optim(Napi::Env env, Napi::Object exports);      // napi/optim.cpp
void register_membw(Napi::Env env, Napi::Object exports);      // napi/membw.cpp
}  // namespace tierlm
