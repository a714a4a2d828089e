// Test helpers for the readers' hostile-input tests (tests/data and tests/io): gzip streams and
// gzip bombs built with zlib, and running a reader in a forked child (with a time limit, and
// optionally an address-space limit) so that a hang or a runaway allocation fails one test
// instead of hanging or killing the whole test binary.
#pragma once

#include <zlib.h>

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <poll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

namespace vgg_test {

// Whether this build runs under AddressSanitizer, which reserves terabytes of shadow address
// space and so cannot run under RLIMIT_AS.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool under_address_sanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool under_address_sanitizer = true;
#else
inline constexpr bool under_address_sanitizer = false;
#endif
#else
inline constexpr bool under_address_sanitizer = false;
#endif

// ensures: `data` as one gzip member (zlib's defaults, no name, mtime 0).
inline std::string gzip(const std::string& data, int level = 9) {
    z_stream zs{};
    if (deflateInit2(&zs, level, Z_DEFLATED, 16 + MAX_WBITS, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        throw std::runtime_error("deflateInit2 failed");
    std::string out(deflateBound(&zs, data.size()), '\0');
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
    zs.avail_in = static_cast<uInt>(data.size());
    zs.next_out = reinterpret_cast<Bytef*>(out.data());
    zs.avail_out = static_cast<uInt>(out.size());
    const int status = deflate(&zs, Z_FINISH);
    out.resize(zs.total_out);
    deflateEnd(&zs);
    if (status != Z_STREAM_END) throw std::runtime_error("deflate did not finish");
    return out;
}

// ensures: a valid one-member gzip file that inflates to `prefix` followed by `zeros` zero bytes,
// built in milliseconds even for gigabytes: one 1 MiB block of zeros is deflated once after a full
// flush (which resets the history, so the block refers to nothing before it) and repeated; the
// CRC-32 is combined arithmetically. About 1 KB per MiB of zeros.
inline std::string gzip_bomb(const std::string& prefix, std::uint64_t zeros) {
    z_stream zs{};
    if (deflateInit2(&zs, 9, Z_DEFLATED, -MAX_WBITS, 9, Z_DEFAULT_STRATEGY) != Z_OK)  // raw deflate
        throw std::runtime_error("deflateInit2 failed");
    auto deflate_chunk = [&](const std::string& input, int flush) {
        std::string out;
        std::vector<unsigned char> buffer(1 << 16);
        zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(input.data()));
        zs.avail_in = static_cast<uInt>(input.size());
        do {
            zs.next_out = buffer.data();
            zs.avail_out = static_cast<uInt>(buffer.size());
            deflate(&zs, flush);
            out.append(reinterpret_cast<const char*>(buffer.data()), buffer.size() - zs.avail_out);
        } while (zs.avail_out == 0 || zs.avail_in != 0);
        return out;
    };
    constexpr std::uint64_t block = 1 << 20;
    const std::string zero_block(block, '\0');
    const std::string head = deflate_chunk(prefix, Z_FULL_FLUSH);
    const std::string repeated = deflate_chunk(zero_block, Z_FULL_FLUSH);
    const std::string rest = deflate_chunk(std::string(zeros % block, '\0'), Z_FULL_FLUSH);
    const std::string tail = deflate_chunk(std::string(), Z_FINISH);
    deflateEnd(&zs);

    uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(prefix.data()), static_cast<uInt>(prefix.size()));
    const uLong block_crc = crc32(0L, reinterpret_cast<const Bytef*>(zero_block.data()), static_cast<uInt>(block));
    std::string file("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", 10);  // deflate, no flags, mtime 0, Unix
    file += head;
    for (std::uint64_t i = 0; i < zeros / block; ++i) {
        file += repeated;
        crc = crc32_combine(crc, block_crc, static_cast<z_off_t>(block));
    }
    const std::string rest_zeros(zeros % block, '\0');
    const uLong rest_crc =
        crc32(0L, reinterpret_cast<const Bytef*>(rest_zeros.data()), static_cast<uInt>(rest_zeros.size()));
    crc = crc32_combine(crc, rest_crc, static_cast<z_off_t>(rest_zeros.size()));
    file += rest;
    file += tail;
    const std::uint64_t total = prefix.size() + zeros;
    for (int i = 0; i < 4; ++i) file += static_cast<char>((crc >> (8 * i)) & 0xff);
    for (int i = 0; i < 4; ++i) file += static_cast<char>((total >> (8 * i)) & 0xff);  // ISIZE: size mod 2^32
    return file;
}

// What a child run by run_in_child did.
struct ChildResult {
    bool timed_out = false;
    int exit_code = -1;    // when it exited
    int signal = 0;        // when a signal ended it
    std::string output;    // what it wrote through `report`
};

// requires: `body` writes what the parent should see through `report` and returns an exit code.
// ensures: body ran in a forked child, under RLIMIT_AS = address_space_limit bytes when that is
// non-zero, and was killed (SIGKILL) after timeout_seconds; the child never returns into the
// test binary (it leaves with _exit, so doctest's state in the child is never reported).
inline ChildResult run_in_child(const std::function<int(const std::function<void(const std::string&)>& report)>& body,
                                double timeout_seconds, std::uint64_t address_space_limit = 0) {
    int pipe_fds[2];
    if (::pipe(pipe_fds) != 0) throw std::runtime_error("pipe failed");
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
        ::close(pipe_fds[0]);
        auto report = [&](const std::string& text) {
            const std::string line = text + "\n";
            for (std::size_t done = 0; done < line.size();) {
                const ssize_t put = ::write(pipe_fds[1], line.data() + done, line.size() - done);
                if (put <= 0) break;
                done += static_cast<std::size_t>(put);
            }
        };
        int code = 99;
        try {
            if (address_space_limit != 0) {
                const rlimit limit{address_space_limit, address_space_limit};
                if (::setrlimit(RLIMIT_AS, &limit) != 0) {
                    report("setrlimit(RLIMIT_AS) failed");
                    ::_exit(98);
                }
            }
            code = body(report);
        } catch (const std::exception& error) {
            report(std::string("uncaught exception: ") + error.what());
        } catch (...) {
            report("uncaught non-standard exception");
        }
        ::_exit(code);
    }
    ::close(pipe_fds[1]);
    ChildResult result;
    timespec start{};
    ::clock_gettime(CLOCK_MONOTONIC, &start);
    auto elapsed = [&] {
        timespec now{};
        ::clock_gettime(CLOCK_MONOTONIC, &now);
        return double(now.tv_sec - start.tv_sec) + 1e-9 * double(now.tv_nsec - start.tv_nsec);
    };
    // Read until the child closes its end (it exits), or time runs out.
    char buffer[4096];
    for (;;) {
        const double left = timeout_seconds - elapsed();
        if (left <= 0) {
            result.timed_out = true;
            ::kill(pid, SIGKILL);
            break;
        }
        pollfd watch{pipe_fds[0], POLLIN, 0};
        if (::poll(&watch, 1, static_cast<int>(left * 1000) + 1) <= 0) continue;
        const ssize_t got = ::read(pipe_fds[0], buffer, sizeof buffer);
        if (got <= 0) break;
        result.output.append(buffer, static_cast<std::size_t>(got));
    }
    ::close(pipe_fds[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
    return result;
}

// ensures: the address space this process uses now (VmSize), in bytes; 0 when unknown.
inline std::uint64_t current_address_space_bytes() {
    std::FILE* statm = std::fopen("/proc/self/statm", "r");
    if (statm == nullptr) return 0;
    unsigned long long pages = 0;
    const int fields = std::fscanf(statm, "%llu", &pages);
    std::fclose(statm);
    return fields == 1 ? pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE)) : 0;
}

}  // namespace vgg_test
