// manifest.json reader over nlohmann::json (Debian nlohmann-json3-dev). The rules are those of
// conformance/CHECKS.md, shared with the Python, Java and Swift readers.
#include "manifest.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <map>
#include <set>

#include "sha256.h"

namespace meki {
namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& msg, const char* check = "manifest.schema") {
  throw BundleError("manifest.json: " + msg, check);
}

const json& at(const json& j, const std::string& key, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) bad(where + key + " is missing");
  return j.at(key);
}

std::string str(const json& j, const std::string& key, const std::string& where) {
  const json& v = at(j, key, where);
  if (!v.is_string() || v.get<std::string>().empty()) bad(where + key + " must be a non-empty string");
  return v.get<std::string>();
}

int64_t integer(const json& j, const std::string& key, const std::string& where, int64_t min) {
  const json& v = at(j, key, where);
  if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) ||
      v.get<int64_t>() < min)
    bad(where + key + " must be an integer >= " + std::to_string(min));
  return v.get<int64_t>();
}

// A string of exactly n lowercase hex digits (fingerprint: 32, sha256: 64). No std::regex: libstdc++'s
// recurses per character, and a fuzzed 1 MiB string would overflow the stack.
std::string hex_string(const json& j, const std::string& key, const std::string& where, size_t n) {
  const std::string v = str(j, key, where);
  bool ok = v.size() == n;
  for (char c : v) ok = ok && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
  if (!ok) bad(where + key + " must be " + std::to_string(n) + " lowercase hex characters");
  return v;
}

std::string one_of(const json& j, const std::string& key, const std::string& where, const std::set<std::string>& ok) {
  const std::string v = str(j, key, where);
  if (!ok.count(v)) bad(where + key + " '" + v + "' is not an allowed value");
  return v;
}

void keys(const json& j, const std::string& where, const std::set<std::string>& allowed) {
  if (!j.is_object()) bad(where + " must be an object");
  for (const auto& kv : j.items())
    if (!allowed.count(kv.key())) bad(where + ": unknown key '" + kv.key() + "'");
}

const json& array(const json& j, const std::string& key, const std::string& where) {
  const json& v = at(j, key, where);
  if (!v.is_array()) bad(where + key + " must be an array");
  return v;
}

// A tensor spec as the schema has it: a name, a shape of integers >= 1, a dtype from the list.
std::string tensor(const json& t, const std::string& where) {
  keys(t, where, {"name", "shape", "dtype"});
  for (const json& d : array(t, "shape", where + "."))
    if (!d.is_number_integer() || d.get<int64_t>() < 1) bad(where + ".shape must hold integers >= 1");
  one_of(t, "dtype", where + ".", {"float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool"});
  return str(t, "name", where + ".");
}

MethodRef method(const json& methods, const std::string& step, const std::string& where) {
  const json& m = at(methods, step, where);
  keys(m, where + step, {"inputs", "outputs", "entry"});
  MethodRef r;
  r.entry = m.contains("entry") && m["entry"].is_string() && !m["entry"].get<std::string>().empty()
                ? m["entry"].get<std::string>() : step;
  for (const json& t : array(m, "outputs", where + step + ".")) tensor(t, where + step + ".outputs[]");
  for (const json& t : array(m, "inputs", where + step + "."))
    r.input_names.push_back(tensor(t, where + step + ".inputs[]"));
  return r;
}

// Every string path field must be clean before anything else (Python: check_manifest_paths).
void check_paths(const json& j) {
  auto one = [](const json& v, const std::string& where) {
    if (!v.is_string()) return;
    const std::string why = path_problem(v.get<std::string>());
    if (!why.empty()) bad(where + " '" + v.get<std::string>() + "' is not a clean relative path (" + why + ")", "manifest.path");
  };
  if (!j.is_object()) return;
  if (j.contains("files") && j["files"].is_array())
    for (size_t i = 0; i < j["files"].size(); ++i)
      if (j["files"][i].is_object() && j["files"][i].contains("path")) one(j["files"][i]["path"], "files/" + std::to_string(i) + "/path");
  if (j.contains("backbones") && j["backbones"].is_array())
    for (size_t i = 0; i < j["backbones"].size(); ++i)
      if (j["backbones"][i].is_object() && j["backbones"][i].contains("file"))
        one(j["backbones"][i]["file"], "backbones/" + std::to_string(i) + "/file");
  for (const char* k : {"memory_pack", "tokenizer"})
    if (j.contains(k) && j[k].is_object() && j[k].contains("file")) one(j[k]["file"], std::string(k) + "/file");
  if (j.contains("files") && j["files"].is_array()) {  // a file listed twice would be hashed twice (N times)
    std::map<std::string, size_t> seen;
    for (size_t i = 0; i < j["files"].size(); ++i) {
      const json& f = j["files"][i];
      if (!f.is_object() || !f.contains("path") || !f["path"].is_string()) continue;
      const auto [at, fresh] = seen.emplace(f["path"].get<std::string>(), i);
      if (!fresh)
        bad("files/" + std::to_string(i) + "/path '" + at->first + "' is listed twice (files/" +
                std::to_string(at->second) + "/path too)", "manifest.path");
    }
  }
}


BackboneRef backbone(const json& b, const std::string& w) {
  keys(b, w, {"target", "file", "quant", "max_seq_len", "prefill_len", "kv_cache", "methods", "delegated", "extra"});
  BackboneRef r;
  r.target = str(b, "target", w);
  r.file = str(b, "file", w);
  r.quant = str(b, "quant", w);
  r.max_seq_len = integer(b, "max_seq_len", w, 1);
  r.prefill_len = integer(b, "prefill_len", w, 1);
  one_of(b, "kv_cache", w, {"internal", "io"});
  if (b.contains("delegated")) {  // backend -> delegated op/partition count
    if (!b["delegated"].is_object()) bad(w + "delegated must be an object");
    for (const auto& kv : b["delegated"].items())
      if (!kv.value().is_number_integer()) bad(w + "delegated." + kv.key() + " must be an integer");
  }
  const json& ms = at(b, "methods", w);
  if (!ms.is_object()) bad(w + "methods must be an object");
  r.prefill = method(ms, "prefill", w + "methods.");
  r.decode = method(ms, "decode", w + "methods.");
  return r;
}

}  // namespace

int json_depth(const std::string& t) {
  int depth = 0, deepest = 0;
  bool in_str = false;
  for (size_t i = 0; i < t.size(); ++i) {
    const char c = t[i];
    if (in_str) {
      if (c == '\\') ++i;
      else if (c == '"') in_str = false;
    } else if (c == '"') {
      in_str = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

std::string path_problem(const std::string& p) {
  if (p.empty()) return "empty path";
  if (p[0] == '/') return "absolute path";
  size_t start = 0;
  for (;;) {
    const size_t end = p.find('/', start);
    const std::string c = p.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (c.empty()) return "empty component (// or a trailing /)";
    if (c == "." || c == "..") return "'" + c + "' component";
    for (unsigned char ch : c)
      if (!(std::isalnum(ch) || ch == '.' || ch == '_' || ch == '-') || ch >= 0x80) return "a character outside [A-Za-z0-9._-/]";
    if (end == std::string::npos) return "";
    start = end + 1;
  }
}

bool BackboneRef::takes_meki_rows() const {
  for (const auto& n : decode.input_names)
    if (n == "meki_rows") return true;
  return false;
}

const BackboneRef& Manifest::backbone(const std::string& target) const {
  std::string have;
  for (const auto& b : backbones) {
    if (b.target == target) return b;
    have += (have.empty() ? "" : ", ") + b.target;
  }
  throw BundleError("bundle '" + name + "' has no backbone for target '" + target + "' (has: " + have + ")");
}

Manifest parse_manifest(const std::string& text, const std::string& where) {
  if (text.size() > kMaxManifestBytes)
    throw BundleError(where + ": " + std::to_string(text.size()) + " bytes, over the 1 MiB manifest limit", "manifest.too_large");
  if (json_depth(text) > kMaxJsonDepth)
    throw BundleError(where + ": JSON nests deeper than " + std::to_string(kMaxJsonDepth) + " levels", "manifest.too_deep");
  if (text.rfind("\xEF\xBB\xBF", 0) == 0)  // nlohmann skips a BOM; RFC 8259 text has none, and the others refuse it
    throw BundleError(where + ": starts with a byte-order mark (not plain JSON)", "manifest.json");
  json j;
  try {
    j = json::parse(text);  // also refuses ill-formed UTF-8
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number like 1e999 (found by fuzz_pack)
    throw BundleError(where + ": not valid JSON (" + e.what() + ")", "manifest.json");
  }
  check_paths(j);
  keys(j, "(top)", {"format", "version", "name", "fingerprint", "memory", "config", "tokenizer", "memory_pack",
                    "backbones", "files", "export"});
  if (at(j, "format", "") != "meki-bundle" || !at(j, "version", "").is_number_integer() || j["version"] != 1)
    bad("not a meki-bundle version 1 manifest");
  Manifest m;
  m.name = str(j, "name", "");
  m.fingerprint = hex_string(j, "fingerprint", "", 32);
  m.memory = one_of(j, "memory", "", {"both", "static", "dynamic", "none"});
  if (!at(j, "config", "").is_object() || !at(j, "export", "").is_object()) bad("config and export must be objects");
  for (auto [key, out] : {std::pair{"dim", &m.dim}, std::pair{"ffn_dim", &m.ffn_dim},
                          std::pair{"vocab_size", &m.vocab_size}}) {
    const json& c = j.at("config");  // ModelConfig's fields; the schema leaves config open, so none is required
    if (c.contains(key) && c[key].is_number_integer() && c[key].get<int64_t>() > 0) *out = c[key].get<int64_t>();
  }
  const json& tok = at(j, "tokenizer", "");
  if (!tok.is_null()) {
    keys(tok, "tokenizer", {"file", "eos_token_ids", "bos_token_id"});
    m.has_tokenizer = true;
    m.tokenizer_file = str(tok, "file", "tokenizer.");
    if (tok.contains("bos_token_id") && !tok["bos_token_id"].is_null() &&
        (!tok["bos_token_id"].is_number_integer() || tok["bos_token_id"].get<int64_t>() < 0))
      bad("tokenizer.bos_token_id must be an integer >= 0 or null");
    for (const json& id : array(tok, "eos_token_ids", "tokenizer.")) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0) bad("tokenizer.eos_token_ids must be integers >= 0");
      m.eos_token_ids.push_back(id.get<int64_t>());
    }
  }
  const json& pack = at(j, "memory_pack", "");
  if (!pack.is_null()) {
    const std::string w = "memory_pack.";
    keys(pack, "memory_pack", {"file", "dtype", "layout", "vocab_size", "num_layers", "d_mem", "fingerprint"});
    m.has_pack = true;
    m.pack = {str(pack, "file", w), one_of(pack, "dtype", w, {"fp16", "bf16", "int8", "int4"}),
              one_of(pack, "layout", w, {"token-major", "layer-major"}), hex_string(pack, "fingerprint", w, 32),
              integer(pack, "vocab_size", w, 1), integer(pack, "num_layers", w, 1), integer(pack, "d_mem", w, 1)};
  }
  const json& bbs = array(j, "backbones", "");
  for (size_t i = 0; i < bbs.size(); ++i) m.backbones.push_back(backbone(bbs[i], "backbones[" + std::to_string(i) + "]."));
  for (const json& f : array(j, "files", "")) {
    keys(f, "files[]", {"path", "sha256", "bytes"});
    m.files.push_back({str(f, "path", "files[]."), hex_string(f, "sha256", "files[].", 64),
                       integer(f, "bytes", "files[].", 0)});
  }
  if (m.backbones.empty() || m.files.empty()) bad("backbones and files must not be empty");
  return m;
}

Manifest load_manifest(const std::string& bundle) {
  const std::string path = bundle + "/manifest.json";
  // O_NONBLOCK: a FIFO named manifest.json must not hang the open; O_NOFOLLOW: a symlink is no
  // manifest (it could point anywhere, and its text would reach our error messages)
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW);
  struct stat st {};
  if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    if (fd >= 0) ::close(fd);
    throw BundleError(bundle + ": no manifest.json (not a bundle folder)", "manifest.missing");
  }
  std::string text(std::min<size_t>(size_t(st.st_size), kMaxManifestBytes + 1), '\0');
  size_t done = 0;  // read at most the cap + 1: a 100 MB manifest is never loaded whole
  while (done < text.size()) {
    const ssize_t r = ::read(fd, &text[done], text.size() - done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    done += size_t(r);
  }
  ::close(fd);
  text.resize(done);
  return parse_manifest(text, path);
}

void check_bundle_files(const std::string& bundle, const Manifest& m, bool check_hashes) {
  std::vector<std::pair<const char*, std::string>> problems;  // (check, message), CHECKS.md order
  std::set<std::string> listed;
  for (const auto& f : m.files) {
    listed.insert(f.path);
    std::string cur = bundle, err;
    const char* check = nullptr;
    struct stat st {};
    for (size_t start = 0; check == nullptr;) {  // lstat each component: no symlink anywhere below the bundle
      const size_t end = f.path.find('/', start);
      cur += "/" + f.path.substr(start, end == std::string::npos ? std::string::npos : end - start);
      if (lstat(cur.c_str(), &st) != 0) check = "bundle.missing", err = f.path + ": missing";
      else if (S_ISLNK(st.st_mode)) check = "bundle.symlink", err = f.path + ": a symbolic link is on its path (refused)";
      if (end == std::string::npos) break;
      start = end + 1;
    }
    if (check == nullptr && !S_ISREG(st.st_mode)) check = "bundle.missing", err = f.path + ": not a regular file";
    else if (check == nullptr && st.st_size != f.bytes)
      check = "bundle.size", err = f.path + ": " + std::to_string(st.st_size) + " bytes, manifest says " + std::to_string(f.bytes);
    else if (check == nullptr && check_hashes && sha256_file(cur) != f.sha256)
      check = "bundle.sha256", err = f.path + ": sha256 does not match the manifest";
    if (check != nullptr) problems.emplace_back(check, err);
  }
  std::vector<std::string> referenced;
  for (const auto& b : m.backbones) referenced.push_back(b.file);
  if (m.has_tokenizer) referenced.push_back(m.tokenizer_file);
  if (m.has_pack) referenced.push_back(m.pack.file);
  for (const auto& r : referenced) {  // the folder rule: a folder counts when a listed file is under it
    const auto it = listed.lower_bound(r + "/");
    if (!listed.count(r) && (it == listed.end() || it->compare(0, r.size() + 1, r + "/") != 0))
      problems.emplace_back("bundle.unlisted", r + ": referenced but not listed in files");
  }
  if (m.has_pack && m.pack.fingerprint != m.fingerprint)
    problems.emplace_back("bundle.fingerprint", "memory pack fingerprint " + m.pack.fingerprint + " != model " + m.fingerprint);
  if ((m.memory == "none") != !m.has_pack)
    problems.emplace_back("bundle.memory", "memory=" + m.memory + " but memory_pack is " + (m.has_pack ? "present" : "absent"));
  if (problems.empty()) return;
  std::string msg;
  for (const auto& p : problems) msg += (msg.empty() ? "" : "; ") + p.second;
  throw BundleError(bundle + ": " + msg, problems[0].first);
}

void check_pack_header(const Manifest& m, const std::string& dtype, const std::string& layout, int64_t vocab_size,
                       int64_t num_layers, int64_t d_mem) {
  const PackRefN& p = m.pack;
  if (dtype != p.dtype || layout != p.layout || vocab_size != p.vocab_size || num_layers != p.num_layers || d_mem != p.d_mem)
    throw BundleError("memory pack " + p.file + ": header says " + dtype + " " + layout + " V=" + std::to_string(vocab_size) +
                          " L=" + std::to_string(num_layers) + " m=" + std::to_string(d_mem) + " but the manifest says " +
                          p.dtype + " " + p.layout + " V=" + std::to_string(p.vocab_size) + " L=" +
                          std::to_string(p.num_layers) + " m=" + std::to_string(p.d_mem),
                      "bundle.pack_mismatch");
}

}  // namespace meki
