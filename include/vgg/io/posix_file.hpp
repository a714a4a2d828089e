// Opening untrusted input files for reading, shared by the IDX and safetensors readers.
//
// A data or checkpoint path can name anything: a directory, a FIFO (whose open() blocks until a
// writer appears, i.e. forever), a device.  Opening with O_NONBLOCK and checking the type with
// fstat() on the open descriptor (not stat() on the name, which could change in between) lets
// every reader refuse such paths at once, saying what the path actually is.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace vgg::io::detail {

// Closes a file descriptor on scope exit; the owner may release() it to close explicitly.
class FileDescriptor {
public:
    FileDescriptor() = default;
    explicit FileDescriptor(int fd) noexcept : fd_(fd) {}
    FileDescriptor(FileDescriptor&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    FileDescriptor& operator=(FileDescriptor&& other) noexcept {
        if (this != &other) {
            reset();
            fd_ = std::exchange(other.fd_, -1);
        }
        return *this;
    }
    FileDescriptor(const FileDescriptor&) = delete;
    FileDescriptor& operator=(const FileDescriptor&) = delete;
    ~FileDescriptor() { reset(); }
    int get() const noexcept { return fd_; }
    int release() noexcept { return std::exchange(fd_, -1); }
    void reset() noexcept {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

private:
    int fd_ = -1;
};

// ensures: what a file of this st_mode is, as a noun phrase for messages ("a directory").
inline std::string file_type_name(mode_t mode) {
    if (S_ISREG(mode)) return "a regular file";
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    return "not a regular file";
}

// The outcome of open_regular_file: an open descriptor and the file's size, or `problem`.
struct OpenedFile {
    FileDescriptor fd;
    std::uint64_t size = 0;
    // Empty on success; otherwise a phrase completing "'<path>' ...", e.g. "is a directory, not a
    // regular file" or "cannot be opened for reading: Permission denied".
    std::string problem;
};

// requires: nothing.  ensures: either fd is open read-only (blocking) on a regular file of
// `size` bytes and problem is empty, or fd is closed and problem says why, with the OS reason
// (strerror) when a system call failed.
inline OpenedFile open_regular_file(const std::filesystem::path& path) {
    OpenedFile opened;
    auto os_problem = [&](const char* action) {
        opened.problem = std::string(action) + ": " + std::strerror(errno);
        opened.fd.reset();
        return std::move(opened);
    };
    opened.fd = FileDescriptor(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    if (opened.fd.get() < 0) return os_problem("cannot be opened for reading");
    struct stat status {};
    if (::fstat(opened.fd.get(), &status) != 0) return os_problem("cannot be examined (fstat)");
    if (!S_ISREG(status.st_mode)) {
        opened.problem = "is " + file_type_name(status.st_mode) + ", not a regular file";
        opened.fd.reset();
        return opened;
    }
    // Regular files never block; clearing O_NONBLOCK keeps read() semantics plain anyway.
    const int flags = ::fcntl(opened.fd.get(), F_GETFL);
    if (flags < 0 || ::fcntl(opened.fd.get(), F_SETFL, flags & ~O_NONBLOCK) != 0)
        return os_problem("cannot be set to blocking reads (fcntl)");
    opened.size = static_cast<std::uint64_t>(status.st_size);
    return opened;
}

}  // namespace vgg::io::detail
