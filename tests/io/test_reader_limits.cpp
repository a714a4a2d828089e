// The IDX and safetensors readers against bombs, under an address-space limit (RLIMIT_AS) of a
// few hundred MB above what the process already uses: each hostile file must be refused with its
// reader's own error, never std::bad_alloc, and never by the kernel killing the process.  Every
// case runs in a forked child, so the limit never touches the rest of the test binary.
// AddressSanitizer reserves terabytes of shadow memory and cannot run under RLIMIT_AS, so the
// sanitizer build reports the case as skipped; tests/data/test_idx.cpp checks the same bombs'
// messages (without the limit) there.
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include <unistd.h>

#include "hostile_files.hpp"
#include "vgg/data/idx.hpp"
#include "vgg/io/safetensors.hpp"

namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t headroom_bytes = std::uint64_t{256} << 20;

std::string be32(std::uint32_t v) {
    return {char(v >> 24), char((v >> 16) & 0xff), char((v >> 8) & 0xff), char(v & 0xff)};
}
std::string le64(std::uint64_t value) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((value >> (8 * i)) & 0xff);
    return out;
}
std::span<const std::uint8_t> as_bytes(const std::string& s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

struct Bomb {
    std::string name;
    std::function<void()> read;    // must throw the reader's own error
    std::string expected_message;  // a fragment of that error
};

// ensures: each bomb, read in a child under RLIMIT_AS = (current use + headroom), was refused with
// its expected message; reports the limit and each message.
void check_bombs_under_limit(const std::vector<Bomb>& bombs) {
    const std::uint64_t in_use = vgg_test::current_address_space_bytes();
    REQUIRE(in_use > 0);
    const std::uint64_t limit = in_use + headroom_bytes;
    MESSAGE("RLIMIT_AS " << (limit >> 20) << " MiB (" << (in_use >> 20) << " MiB in use + " << (headroom_bytes >> 20)
                         << " MiB)");
    for (const Bomb& bomb : bombs) {
        CAPTURE(bomb.name);
        const auto child = vgg_test::run_in_child(
            [&](const auto& report) {
                try {
                    bomb.read();
                    report("accepted");
                    return 1;
                } catch (const vgg::data::DataError& error) {
                    report(error.what());
                } catch (const vgg::io::CheckpointError& error) {
                    report(error.what());
                } catch (const std::bad_alloc&) {
                    report("std::bad_alloc");
                    return 2;
                }
                return 0;
            },
            60.0, limit);
        INFO("child output: " << child.output);
        CHECK_FALSE(child.timed_out);
        CHECK(child.signal == 0);
        CHECK(child.exit_code == 0);
        CHECK(child.output.find(bomb.expected_message) != std::string::npos);
    }
}

}  // namespace

TEST_CASE("IDX and safetensors bombs are refused within an address-space limit" *
          doctest::skip(vgg_test::under_address_sanitizer)) {
    const fs::path dir = fs::temp_directory_path() / ("vgg_limits_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    auto write = [&](const std::string& name, const std::string& bytes) {
        std::ofstream(dir / name, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
        return dir / name;
    };

    // 4 GiB of zeros after a valid 5-label file, in one ~4 MB gzip member: the old reader inflated
    // it all into memory (std::bad_alloc here).
    const std::string labels = be32(0x00000801) + be32(5) + std::string("\x03\x00\x09\x01\x07", 5);
    const std::string bomb_bytes = vgg_test::gzip_bomb(labels, std::uint64_t{4} << 30);
    const fs::path idx_bomb = write("bomb-labels-idx1-ubyte.gz", bomb_bytes);
    // Headers declaring gigabytes: 2 GB in a small gzip file (more than deflate can expand it to)
    // and 4 GB in a raw file of 16 bytes.
    const fs::path idx_lying_gzip =
        write("lying.gz", vgg_test::gzip(be32(0x00000803) + be32(2000) + be32(1000) + be32(1000)));
    const fs::path idx_lying_raw = write("lying.idx", be32(0x00000803) + be32(4000) + be32(1000) + be32(1000));

    // Safetensors: a header length of 2^63, one of 99,999,999 in a 10-byte file, a tensor of 2^40
    // bytes in a 100-byte buffer, a header of millions of keys.
    const fs::path st_header_huge = write("header-huge.safetensors", le64(std::uint64_t{1} << 63) + "{}");
    const fs::path st_header_past = write("header-past.safetensors", le64(99'999'999) + "{}");
    const std::string tensor_header =
        R"({"w":{"dtype":"U8","shape":[1099511627776],"data_offsets":[0,1099511627776]}})";
    // 24 MB of tiny keys: the whole tree once cost ~15 times the header's size.
    std::string many_keys = "{";
    for (int i = 0; i < 2'000'000; ++i) many_keys += (i ? ",\"" : "\"") + std::to_string(i) + "\":0";
    many_keys += "}";
    const fs::path st_many_keys = write("many-keys.safetensors", le64(many_keys.size()) + many_keys);
    const fs::path st_tensor_huge =
        write("tensor-huge.safetensors", le64(tensor_header.size()) + tensor_header + std::string(100, '\0'));

    check_bombs_under_limit({
        {"IDX gzip bomb (file)", [&] { (void)vgg::data::read_idx_labels(idx_bomb); },
         "holds more data than its header declares"},
        {"IDX gzip bomb (bytes)", [&] { (void)vgg::data::idx_labels_from_bytes(as_bytes(bomb_bytes), "bomb"); },
         "holds more data than its header declares"},
        {"IDX gzip header declaring 2 GB", [&] { (void)vgg::data::read_idx_images(idx_lying_gzip); },
         "truncated or its header is corrupt"},
        {"IDX raw header declaring 4 GB", [&] { (void)vgg::data::read_idx_images(idx_lying_raw); },
         "is truncated: expected 4000000016 bytes"},
        {"safetensors header length 2^63", [&] { (void)vgg::io::load_safetensors(st_header_huge); }, "exceeds"},
        {"safetensors header length past the end", [&] { (void)vgg::io::load_safetensors(st_header_past); },
         "runs past the end of the file"},
        {"safetensors header of 2,000,000 keys", [&] { (void)vgg::io::load_safetensors(st_many_keys); },
         "more than 300000 JSON keys and values"},
        {"safetensors tensor of 2^40 bytes",
         [&] {
             const auto file = vgg::io::load_safetensors(st_tensor_huge);
             (void)file.read_all<std::uint8_t>("w");
         },
         "end past the data buffer"},
    });
    std::error_code ignored;
    fs::remove_all(dir, ignored);
}
