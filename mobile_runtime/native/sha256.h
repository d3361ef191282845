// SHA-256 (FIPS 180-4) of a file, for the bundle's per-file hashes; no OpenSSL on the phone build.
#pragma once

#include <string>

namespace meki {

// Lowercase hex SHA-256 of the file at path; throws std::runtime_error if it cannot be read.
std::string sha256_file(const std::string& path);
// Lowercase hex SHA-256 of a byte string (tests: FIPS 180-4 vectors).
std::string sha256_hex(const std::string& data);

}  // namespace meki
