// manifest.json reader over nlohmann::json (Debian nlohmann-json3-dev).
#include "manifest.h"

#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

namespace meki {
namespace {

using nlohmann::json;

const json& at(const json& j, const std::string& key, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) throw BundleError("manifest.json: " + where + key + " is missing");
  return j.at(key);
}

std::string str(const json& j, const std::string& key, const std::string& where) {
  const json& v = at(j, key, where);
  if (!v.is_string()) throw BundleError("manifest.json: " + where + key + " must be a string");
  return v.get<std::string>();
}

int64_t integer(const json& j, const std::string& key, const std::string& where) {
  const json& v = at(j, key, where);
  if (!v.is_number_integer()) throw BundleError("manifest.json: " + where + key + " must be an integer");
  return v.get<int64_t>();
}

MethodRef method(const json& methods, const std::string& step, const std::string& where) {
  const json& m = at(methods, step, where);
  MethodRef r;
  r.entry = m.contains("entry") && m["entry"].is_string() && !m["entry"].get<std::string>().empty()
                ? m["entry"].get<std::string>() : step;
  for (const json& t : at(m, "inputs", where + step + "."))
    r.input_names.push_back(str(t, "name", where + step + ".inputs[]."));
  return r;
}

}  // namespace

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

Manifest load_manifest(const std::string& bundle) {
  const std::string path = bundle + "/manifest.json";
  std::ifstream in(path);
  if (!in) throw BundleError(bundle + ": no manifest.json (not a bundle folder)");
  json j;
  try {
    in >> j;
  } catch (const json::parse_error& e) {
    throw BundleError(path + ": not valid JSON (" + e.what() + ")");
  }
  if (str(j, "format", "") != "meki-bundle" || integer(j, "version", "") != 1)
    throw BundleError(path + ": not a meki-bundle version 1 manifest");
  Manifest m;
  m.name = str(j, "name", "");
  m.fingerprint = str(j, "fingerprint", "");
  m.memory = str(j, "memory", "");
  const json& tok = at(j, "tokenizer", "");
  if (!tok.is_null()) {
    m.has_tokenizer = true;
    for (const json& id : at(tok, "eos_token_ids", "tokenizer.")) m.eos_token_ids.push_back(id.get<int64_t>());
  }
  const json& pack = at(j, "memory_pack", "");
  if (!pack.is_null()) {
    m.has_pack = true;
    const std::string w = "memory_pack.";
    m.pack = {str(pack, "file", w), str(pack, "dtype", w), str(pack, "layout", w), str(pack, "fingerprint", w),
              integer(pack, "vocab_size", w), integer(pack, "num_layers", w), integer(pack, "d_mem", w)};
  }
  const json& bbs = at(j, "backbones", "");
  for (size_t i = 0; i < bbs.size(); ++i) {
    const json& b = bbs[i];
    const std::string w = "backbones[" + std::to_string(i) + "].";
    BackboneRef r;
    r.target = str(b, "target", w);
    r.file = str(b, "file", w);
    r.quant = str(b, "quant", w);
    r.max_seq_len = integer(b, "max_seq_len", w);
    r.prefill_len = integer(b, "prefill_len", w);
    const json& ms = at(b, "methods", w);
    r.prefill = method(ms, "prefill", w + "methods.");
    r.decode = method(ms, "decode", w + "methods.");
    if (r.prefill_len < 1 || r.max_seq_len < 1) throw BundleError("manifest.json: " + w + " prefill_len/max_seq_len must be >= 1");
    m.backbones.push_back(std::move(r));
  }
  for (const json& f : at(j, "files", "")) m.files.push_back({str(f, "path", "files[]."), integer(f, "bytes", "files[].")});
  return m;
}

void check_bundle_files(const std::string& bundle, const Manifest& m) {
  std::string problems;
  auto add = [&](const std::string& p) { problems += (problems.empty() ? "" : "; ") + p; };
  std::set<std::string> listed;
  for (const auto& f : m.files) {
    listed.insert(f.path);
    struct stat st {};
    if (stat((bundle + "/" + f.path).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) add(f.path + ": missing");
    else if (st.st_size != f.bytes)
      add(f.path + ": " + std::to_string(st.st_size) + " bytes, manifest says " + std::to_string(f.bytes));
  }
  std::vector<std::string> referenced;
  for (const auto& b : m.backbones) referenced.push_back(b.file);
  if (m.has_pack) referenced.push_back(m.pack.file);
  for (const auto& r : referenced)
    if (!listed.count(r)) add(r + ": referenced but not listed in files");
  if (m.has_pack && m.pack.fingerprint != m.fingerprint)
    add("memory pack fingerprint " + m.pack.fingerprint + " != model " + m.fingerprint);
  if ((m.memory == "none") != !m.has_pack)
    add("memory=" + m.memory + " but memory_pack is " + (m.has_pack ? "present" : "absent"));
  if (!problems.empty()) throw BundleError(bundle + ": " + problems);
}

}  // namespace meki
