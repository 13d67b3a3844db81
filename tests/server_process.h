// Runs the aeserve binary as a child process for tests: start with flags, learn its port from the
// log, signal it, and wait for its exit with a timeout. In sanitizer builds, a report in the
// server's log fails the test that ran it, even when the server was killed.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace aeserve::testing {

class ServerProcess {
 public:
  // Starts `binary` with `args`; returns once it logs its port or after `timeout_s`.
  bool Start(const std::string& binary, std::vector<std::string> args, double timeout_s = 30) {
    int fds[2];
    if (pipe(fds) != 0) return false;
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) {
      // A test process that dies (a failed assertion under a sanitizer's halt_on_error, a crash)
      // takes its servers with it instead of leaving them running.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      dup2(fds[1], 1);
      dup2(fds[1], 2);
      close(fds[0]);
      std::vector<char*> argv{const_cast<char*>(binary.c_str())};
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(binary.c_str(), argv.data());
      _exit(127);
    }
    close(fds[1]);
    reader_ = std::thread([this, fd = fds[0]] {
      FILE* f = fdopen(fd, "r");
      char buf[4096];
      while (fgets(buf, sizeof buf, f)) {
        std::lock_guard<std::mutex> lock(mu_);
        log_ += buf;
        std::smatch m;
        std::string line(buf);
        if (port_ == 0 && std::regex_search(line, m, std::regex("listening on [^:]+:([0-9]+)"))) {
          port_ = std::stoi(m[1]);
        }
      }
      fclose(f);
    });
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < until) {
      if (port() != 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }

  pid_t pid() const { return pid_; }
  int port() {
    std::lock_guard<std::mutex> lock(mu_);
    return port_;
  }
  std::string log() {
    std::lock_guard<std::mutex> lock(mu_);
    return log_;
  }
  void Signal(int sig) {
    if (pid_ > 0) kill(pid_, sig);
  }
  // The exit code, or -1 when it did not exit within `timeout_s` (it is then killed).
  int Wait(double timeout_s) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    int status = 0;
    while (std::chrono::steady_clock::now() < until) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        if (reader_.joinable()) reader_.join();
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (reader_.joinable()) reader_.join();
    for (const char* mark : {"ERROR: AddressSanitizer", "WARNING: ThreadSanitizer",
                             "runtime error:", "ERROR: LeakSanitizer"}) {
      if (log_.find(mark) != std::string::npos) {
        ADD_FAILURE() << "the server reported \"" << mark << "\"; its log:\n" << log_;
        break;
      }
    }
  }

 private:
  pid_t pid_ = -1;
  std::thread reader_;
  std::mutex mu_;
  std::string log_;
  int port_ = 0;
};

}  // namespace aeserve::testing
