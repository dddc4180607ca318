// Errors from the operating system as JavaScript sees them: "ENOENT (No such file or directory)
// opening /x/y", with `code` and `errno` set as Node's own fs errors have them.
#pragma once

#include <napi.h>
#include <string.h>

#include <string>

namespace tierlm {

inline std::string errno_name(int err) {
  const char* name = strerrordesc_np(err) ? strerrorname_np(err) : nullptr;
  return name ? std::string(name) : "E" + std::to_string(err);
}

inline std::string errno_text(int err) {
  const char* d = strerrordesc_np(err);
  return d ? std::string(d) : "error " + std::to_string(err);
}

inline Napi::Error os_error(Napi::Env env, int err, const std::string& what) {
  std::string code = errno_name(err);
  Napi::Error e = Napi::Error::New(env, code + " (" + errno_text(err) + ") " + what);
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, -err));
  return e;
}

}  // namespace tierlm
