// Advisory file locks (flock) for sharing a disk directory between runs: src/tensor/disk/lock.ts.
//
//   fileLockTry(path) -> fd | null   creates `path` if needed and takes an exclusive lock on it
//                                    without waiting; null when another open file holds it
//   fileLockRelease(fd)              closes the descriptor, which drops the lock
//
// flock rather than fcntl locks: an flock belongs to the open file, not to the process, so two
// runs in one process exclude each other too, and closing some other descriptor of the same file
// does not drop it. The kernel drops it when the holder dies, SIGKILL included, so a lock that can
// be taken proves its last holder is gone (a pid in a file name can be reused; a lock cannot).
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <napi.h>

#include "napi/args.h"
#include "napi/os_error.h"
#include "napi/register.h"

namespace tierlm {
namespace {

Napi::Value FileLockTry(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "fileLockTry: path must be a string");
  std::string path = info[0].As<Napi::String>();
  int fd;
  do fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) throw os_error(env, errno, "opening the lock file " + path + " (open)");
  int rc;
  do rc = flock(fd, LOCK_EX | LOCK_NB);
  while (rc != 0 && errno == EINTR);
  if (rc == 0) return Napi::Number::New(env, fd);
  int err = errno;
  close(fd);
  if (err == EWOULDBLOCK) return env.Null();
  throw os_error(env, err, "locking " + path + " (flock)");
}

Napi::Value FileLockRelease(const Napi::CallbackInfo& info) {
  int fd = static_cast<int>(int_arg(info, 0, "fd", 0, INT32_MAX));
  if (close(fd) != 0 && errno != EINTR) throw os_error(info.Env(), errno, "releasing a file lock (close)");
  return info.Env().Undefined();
}

}  // namespace

void register_lock(Napi::Env env, Napi::Object exports) {
  exports.Set("fileLockTry", Napi::Function::New(env, FileLockTry));
  exports.Set("fileLockRelease", Napi::Function::New(env, FileLockRelease));
}

}  // namespace tierlm
