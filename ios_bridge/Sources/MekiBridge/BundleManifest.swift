import Foundation

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

    public static func parse(_ json: Data) throws -> BundleManifest {
        try checkKeys(JSONSerialization.jsonObject(with: json))
        let m = try JSONDecoder().decode(BundleManifest.self, from: json)
        guard m.format == "meki-bundle", m.version == 1 else {
            throw BundleError("format \(m.format) version \(m.version) is not supported (this reader reads meki-bundle 1)")
        }
        return m
    }

    public static func load(_ dir: URL) throws -> BundleManifest {
        try parse(Data(contentsOf: dir.appendingPathComponent("manifest.json")))
    }

    static func checkKeys(_ any: Any) throws {
        guard let top = any as? [String: Any] else { throw BundleError("manifest is not a JSON object") }
        try only(top, "", "(top)")
        if let t = top["tokenizer"] as? [String: Any] { try only(t, "tokenizer", "tokenizer") }
        if let p = top["memory_pack"] as? [String: Any] { try only(p, "memory_pack", "memory_pack") }
        for (i, f) in ((top["files"] as? [[String: Any]]) ?? []).enumerated() { try only(f, "file", "files/\(i)") }
        for (i, b) in ((top["backbones"] as? [[String: Any]]) ?? []).enumerated() {
            try only(b, "backbone", "backbones/\(i)")
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

public struct BundleError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
