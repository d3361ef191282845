import Foundation
#if canImport(CryptoKit)
import CryptoKit
#endif

/// A bundle's manifest.json (v1; schema contract/bundle_manifest.schema.json), decoded with
/// Codable. Unknown keys are refused at every level (Codable alone would drop them silently).
public struct BundleManifest: Codable {
    public struct TensorSpec: Codable { public let name: String; public let shape: [Int]; public let dtype: String }

    public struct MethodSpec: Codable {
        public let inputs: [TensorSpec]
        public let outputs: [TensorSpec]
        public let entry: String?
        public func input(_ name: String) -> TensorSpec? { inputs.first { $0.name == name } }
    }

    public struct Backbone: Codable {
        public let target: String, file: String, quant: String
        public let maxSeqLen: Int, prefillLen: Int
        public let kvCache: String
        public let methods: [String: MethodSpec]
        public var takesMekiRows: Bool { methods["decode"]?.input("meki_rows") != nil }
        enum CodingKeys: String, CodingKey {
            case target, file, quant, methods
            case maxSeqLen = "max_seq_len", prefillLen = "prefill_len", kvCache = "kv_cache"
        }
    }

    public struct PackRef: Codable {
        public let file: String, dtype: String, layout: String, fingerprint: String
        public let vocabSize: Int, numLayers: Int, dMem: Int
        enum CodingKeys: String, CodingKey {
            case file, dtype, layout, fingerprint
            case vocabSize = "vocab_size", numLayers = "num_layers", dMem = "d_mem"
        }

        /// The pack header must say what this entry says (bundle.pack_mismatch); every consumer calls it.
        public func check(_ h: PackHeader) throws {
            guard h.dtypeName == dtype, h.layoutName == layout, h.vocabSize == vocabSize, h.numLayers == numLayers,
                  h.dMem == dMem else {
                throw BundleError("bundle.pack_mismatch", "memory pack \(file) is \(h.dtypeName) \(h.layoutName) V=\(h.vocabSize) "
                                  + "L=\(h.numLayers) m=\(h.dMem) but the manifest says \(dtype) \(layout) V=\(vocabSize) "
                                  + "L=\(numLayers) m=\(dMem)")
            }
        }
    }

    public struct TokenizerRef: Codable {
        public let file: String
        public let eosTokenIds: [Int]
        public let bosTokenId: Int?
        enum CodingKeys: String, CodingKey { case file, eosTokenIds = "eos_token_ids", bosTokenId = "bos_token_id" }
    }

    public struct FileEntry: Codable { public let path: String; public let sha256: String; public let bytes: Int }

    public let format: String, version: Int, name: String, fingerprint: String, memory: String
    public let tokenizer: TokenizerRef?
    public let memoryPack: PackRef?
    public let backbones: [Backbone]
    public let files: [FileEntry]
    enum CodingKeys: String, CodingKey {
        case format, version, name, fingerprint, memory, tokenizer, backbones, files
        case memoryPack = "memory_pack"
    }

    /// Keys each object may hold (config, export, delegated and extra are free-form).
    static let allowed: [String: Set<String>] = [
        "": ["format", "version", "name", "fingerprint", "memory", "config", "tokenizer", "memory_pack", "backbones",
             "files", "export"],
        "tokenizer": ["file", "eos_token_ids", "bos_token_id"],
        "memory_pack": ["file", "dtype", "layout", "vocab_size", "num_layers", "d_mem", "fingerprint"],
        "backbone": ["target", "file", "quant", "max_seq_len", "prefill_len", "kv_cache", "methods", "delegated", "extra"],
        "method": ["inputs", "outputs", "entry"], "tensor": ["name", "shape", "dtype"], "file": ["path", "sha256", "bytes"],
    ]

    /// conformance/CHECKS.md limits, shared with the Python, C++ and Java readers.
    public static let maxManifestBytes = 1 << 20, maxJsonDepth = 64

    /// Size cap, depth cap (a scan: JSONSerialization recurses), JSON, paths, unknown keys, schema.
    public static func parse(_ json: Data) throws -> BundleManifest {
        guard json.count <= maxManifestBytes else {
            throw BundleError("manifest.too_large", "manifest is \(json.count) bytes, over the \(maxManifestBytes)-byte limit")
        }
        guard !json.starts(with: [0xEF, 0xBB, 0xBF]) else {  // RFC 8259 text has no byte-order mark
            throw BundleError("manifest.json", "manifest starts with a byte-order mark (not plain JSON)")
        }
        guard jsonDepth(json) <= maxJsonDepth else {
            throw BundleError("manifest.too_deep", "manifest JSON nests deeper than \(maxJsonDepth) levels")
        }
        let any: Any
        do {
            any = try JSONSerialization.jsonObject(with: json)   // refuses ill-formed UTF-8 too
        } catch {
            throw BundleError("manifest.json", "manifest is not valid JSON: \(error)")
        }
        try checkPaths(any)
        try checkKeys(any)
        let m: BundleManifest
        do {
            m = try JSONDecoder().decode(BundleManifest.self, from: json)
        } catch {
            throw BundleError("manifest.schema", "manifest does not match the schema: \(error)")
        }
        try m.validate()
        return m
    }

    /// Read dir/manifest.json (no file checks; see verify).
    public static func load(_ dir: URL) throws -> BundleManifest {
        let url = dir.appendingPathComponent("manifest.json")
        let attrs = try? FileManager.default.attributesOfItem(atPath: url.path)
        guard let a = attrs, (a[.type] as? FileAttributeType) == .typeRegular else {
            throw BundleError("manifest.missing", "\(dir.path): no manifest.json (not a bundle folder)")
        }
        if let size = a[.size] as? Int, size > maxManifestBytes {
            throw BundleError("manifest.too_large", "manifest is \(size) bytes, over the \(maxManifestBytes)-byte limit")
        }
        return try parse(Data(contentsOf: url))
    }

    /// Deepest array/object nesting of JSON text, by a scan that never recurses (strings skipped).
    static func jsonDepth(_ d: Data) -> Int {
        var depth = 0, deepest = 0, inString = false, escaped = false
        for c in d {
            if inString {
                if escaped { escaped = false } else if c == 0x5C { escaped = true } else if c == 0x22 { inString = false }
            } else if c == 0x22 {
                inString = true
            } else if c == 0x5B || c == 0x7B {
                depth += 1
                deepest = max(deepest, depth)
            } else if c == 0x5D || c == 0x7D {
                depth -= 1
            }
        }
        return deepest
    }

    /// Why p is not a clean bundle-relative path (CHECKS.md manifest.path), or nil.
    public static func pathProblem(_ p: String) -> String? {
        if p.isEmpty { return "empty path" }
        if p.hasPrefix("/") { return "absolute path" }
        for c in p.split(separator: "/", omittingEmptySubsequences: false) {
            if c.isEmpty { return "empty component (// or a trailing /)" }
            if c == "." || c == ".." { return "'\(c)' component" }
            for u in c.unicodeScalars {
                let ok = (u >= "a" && u <= "z") || (u >= "A" && u <= "Z") || (u >= "0" && u <= "9") || u == "." || u == "_" || u == "-"
                if !ok { return "a character outside [A-Za-z0-9._-/]" }
            }
        }
        return nil
    }

    /// Every string path field must be clean before anything else (Python: check_manifest_paths).
    static func checkPaths(_ any: Any) throws {
        guard let top = any as? [String: Any] else { return }
        var fields: [(String, Any?)] = []
        for (i, f) in ((top["files"] as? [Any]) ?? []).enumerated() { fields.append(("files/\(i)/path", (f as? [String: Any])?["path"])) }
        for (i, b) in ((top["backbones"] as? [Any]) ?? []).enumerated() { fields.append(("backbones/\(i)/file", (b as? [String: Any])?["file"])) }
        for k in ["memory_pack", "tokenizer"] { fields.append(("\(k)/file", (top[k] as? [String: Any])?["file"])) }
        for (w, v) in fields {
            if let p = v as? String, let why = pathProblem(p) {
                throw BundleError("manifest.path", "\(w): '\(p)' is not a clean relative path (\(why))")
            }
        }
        var seen: [String: Int] = [:]  // a file listed twice would be hashed twice (N times)
        for (i, f) in ((top["files"] as? [Any]) ?? []).enumerated() {
            guard let p = (f as? [String: Any])?["path"] as? String else { continue }
            if let first = seen[p] {
                throw BundleError("manifest.path", "files/\(i)/path: '\(p)' is listed twice (files/\(first)/path too)")
            }
            seen[p] = i
        }
    }

    static func isHex(_ s: String, _ n: Int) -> Bool {
        s.utf8.count == n && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    /// What Codable cannot express: patterns, enums, ranges (the schema's constraints).
    func validate() throws {
        func bad(_ m: String) -> BundleError { BundleError("manifest.schema", m) }
        guard format == "meki-bundle", version == 1 else {
            throw bad("format \(format) version \(version) is not supported (this reader reads meki-bundle 1)")
        }
        guard !name.isEmpty, BundleManifest.isHex(fingerprint, 32) else { throw bad("name empty or fingerprint not 32 hex") }
        guard ["both", "static", "dynamic", "none"].contains(memory) else { throw bad("memory '\(memory)' is not allowed") }
        guard !backbones.isEmpty, !files.isEmpty else { throw bad("backbones and files must not be empty") }
        for f in files where !BundleManifest.isHex(f.sha256, 64) || f.bytes < 0 {
            throw bad("files: \(f.path) needs a 64-hex sha256 and bytes >= 0")
        }
        for b in backbones where b.methods["prefill"] == nil || b.methods["decode"] == nil || b.maxSeqLen < 1 || b.prefillLen < 1
            || !["internal", "io"].contains(b.kvCache) {
            throw bad("backbone \(b.target): prefill/decode methods, lengths >= 1 and kv_cache internal|io are required")
        }
        let dtypes: Set<String> = ["float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool"]
        for b in backbones {
            for (step, m) in b.methods {
                for t in m.inputs + m.outputs where !dtypes.contains(t.dtype) || t.shape.contains(where: { $0 < 1 }) {
                    throw bad("backbone \(b.target) \(step): tensor \(t.name) needs a dtype from the schema "
                              + "and a shape of integers >= 1")
                }
            }
        }
        if let p = memoryPack {
            guard ["fp16", "bf16", "int8", "int4"].contains(p.dtype), ["token-major", "layer-major"].contains(p.layout),
                  p.vocabSize >= 1, p.numLayers >= 1, p.dMem >= 1, BundleManifest.isHex(p.fingerprint, 32) else {
                throw bad("memory_pack: bad dtype, layout, dimensions or fingerprint")
            }
        }
    }

    /// Same checks as contract.manifest.verify_bundle: every listed file a regular file with no
    /// symlink on its path below the bundle folder, sizes, sha256, references (folder rule), fingerprints.
    public static func verify(_ dir: URL, checkHashes: Bool) throws -> BundleManifest {
        let m = try load(dir)
        var problems: [(String, String)] = []
        for f in m.files {
            if let p = fileProblem(dir, f, checkHashes: checkHashes) { problems.append(p) }
        }
        problems += m.referenceFindings()
        if let first = problems.first {
            throw BundleError(first.0, "\(dir.path): " + problems.map { $0.1 }.joined(separator: "; "))
        }
        return m
    }

    /// (check, message) for one listed file, or nil. attributesOfItem does not follow a symlink.
    static func fileProblem(_ dir: URL, _ f: FileEntry, checkHashes: Bool) -> (String, String)? {
        var cur = dir
        var attrs: [FileAttributeKey: Any] = [:]
        for part in f.path.split(separator: "/") {
            cur = cur.appendingPathComponent(String(part))
            guard let a = try? FileManager.default.attributesOfItem(atPath: cur.path) else {
                return ("bundle.missing", "\(f.path): missing")
            }
            if (a[.type] as? FileAttributeType) == .typeSymbolicLink {
                return ("bundle.symlink", "\(f.path): a symbolic link is on its path (refused)")
            }
            attrs = a
        }
        guard (attrs[.type] as? FileAttributeType) == .typeRegular else { return ("bundle.missing", "\(f.path): not a regular file") }
        let size = (attrs[.size] as? Int) ?? -1
        guard size == f.bytes else { return ("bundle.size", "\(f.path): \(size) bytes, manifest says \(f.bytes)") }
        if checkHashes, let got = sha256(cur), got != f.sha256 {
            return ("bundle.sha256", "\(f.path): sha256 does not match the manifest")
        }
        return nil
    }

    /// Hex SHA-256 of a file, streamed in 1 MiB chunks; nil where CryptoKit is missing (Linux).
    static func sha256(_ url: URL) -> String? {
        #if canImport(CryptoKit)
        guard let fh = try? FileHandle(forReadingFrom: url) else { return "" }
        defer { try? fh.close() }
        var h = SHA256()
        while let chunk = try? fh.read(upToCount: 1 << 20), !chunk.isEmpty { h.update(data: chunk) }
        return h.finalize().map { String(format: "%02x", $0) }.joined()
        #else
        return nil
        #endif
    }

    /// (check, message) of each reference problem. The folder rule: a referenced folder (a Core ML
    /// .mlpackage) counts as listed when at least one listed file lies under it.
    public func referenceFindings() -> [(String, String)] {
        let listed = Set(files.map { $0.path })
        var refs = backbones.map { $0.file }
        if let t = tokenizer { refs.append(t.file) }
        if let p = memoryPack { refs.append(p.file) }
        var out: [(String, String)] = []
        for r in refs where !listed.contains(r) && !listed.contains(where: { $0.hasPrefix(r + "/") }) {
            out.append(("bundle.unlisted", "\(r): referenced but not listed in files"))
        }
        if let p = memoryPack, p.fingerprint != fingerprint {
            out.append(("bundle.fingerprint", "memory pack fingerprint \(p.fingerprint) != model \(fingerprint)"))
        }
        if (memory == "none") != (memoryPack == nil) {
            out.append(("bundle.memory", "memory=\(memory) but memory_pack is \(memoryPack == nil ? "absent" : "present")"))
        }
        return out
    }

    static func checkKeys(_ any: Any) throws {
        guard let top = any as? [String: Any] else { throw BundleError("manifest.schema", "manifest is not a JSON object") }
        try only(top, "", "(top)")
        if let t = top["tokenizer"] as? [String: Any] { try only(t, "tokenizer", "tokenizer") }
        if let p = top["memory_pack"] as? [String: Any] { try only(p, "memory_pack", "memory_pack") }
        for (i, f) in ((top["files"] as? [[String: Any]]) ?? []).enumerated() { try only(f, "file", "files/\(i)") }
        for (i, b) in ((top["backbones"] as? [[String: Any]]) ?? []).enumerated() {
            try only(b, "backbone", "backbones/\(i)")
            if let d = b["delegated"], !((d as? [String: Any])?.values.allSatisfy({ ($0 as? Int) != nil }) ?? false) {
                throw BundleError("manifest.schema", "backbones/\(i)/delegated: must map each backend to an integer")
            }
            for (k, m) in (b["methods"] as? [String: [String: Any]]) ?? [:] {
                try only(m, "method", "backbones/\(i)/methods/\(k)")
                for t in ((m["inputs"] as? [[String: Any]]) ?? []) + ((m["outputs"] as? [[String: Any]]) ?? []) {
                    try only(t, "tensor", "backbones/\(i)/methods/\(k)")
                }
            }
        }
    }

    static func only(_ o: [String: Any], _ kind: String, _ where_: String) throws {
        if let bad = o.keys.sorted().first(where: { !(allowed[kind] ?? []).contains($0) }) {
            throw BundleError("\(where_): unknown key '\(bad)'")
        }
    }

    public func backbone(_ target: String) throws -> Backbone {
        guard let b = backbones.first(where: { $0.target == target }) else {
            throw BundleError("bundle '\(name)' has no backbone for target '\(target)' (has: \(backbones.map(\.target).joined(separator: ", ")))")
        }
        return b
    }
}

/// A bundle that cannot be trusted; `check` is the conformance/CHECKS.md name of the refusing rule.
public struct BundleError: Error, CustomStringConvertible {
    public let check: String
    public let description: String
    public init(_ description: String) { self.init("manifest.schema", description) }
    public init(_ check: String, _ description: String) {
        self.check = check
        self.description = description
    }
}
