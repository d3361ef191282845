import Foundation
import XCTest

@testable import MekiBridge

/// The shared golden vectors (conformance/golden/make_golden.py): every row equal, float for float, and
/// damaged copies refused. Resources/golden is filled by pipeline.bundle_apps.copy_golden_ios;
/// without it the repository's conformance/golden is used (swift test on a Mac, from a checkout).
final class MemoryPackGoldenTests: XCTestCase {
    struct Spec: Decodable {
        struct Pack: Decodable { let file: String; let dtype: String; let layout: String; let rows: [String: [[Double]]] }
        let fingerprint: String
        let tokens: [Int]
        let packs: [Pack]
    }

    static var goldenDir: URL {
        if let url = Bundle.module.url(forResource: "golden", withExtension: nil, subdirectory: "Resources"),
           FileManager.default.fileExists(atPath: url.appendingPathComponent("pack_golden.json").path) {
            return url
        }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../../conformance/golden").standardized
    }

    func spec() throws -> Spec {
        try JSONDecoder().decode(Spec.self, from: Data(contentsOf: Self.goldenDir.appendingPathComponent("pack_golden.json")))
    }

    func testEveryGoldenRowMatches() throws {
        let s = try spec()
        XCTAssertEqual(s.packs.count, 5)
        for entry in s.packs {
            let pack = try MemoryPack(url: Self.goldenDir.appendingPathComponent(entry.file), expectedFingerprint: s.fingerprint)
            XCTAssertEqual(pack.header.dtypeName, entry.dtype)
            XCTAssertEqual(pack.header.layoutName, entry.layout)
            try pack.verify()
            let got = try pack.lookup(s.tokens + s.tokens)   // second pass through the cache
            for (i, t) in (s.tokens + s.tokens).enumerated() {
                let want = entry.rows[String(t)]!.flatMap { $0.map { Float($0) } }
                XCTAssertEqual(Array(got[(i * want.count)..<((i + 1) * want.count)]), want, "\(entry.file) token \(t)")
            }
            XCTAssertThrowsError(try pack.lookup([pack.header.vocabSize]))
        }
    }

    func testDamagedCopiesAreRefused() throws {
        let s = try spec()
        let good = try Data(contentsOf: Self.goldenDir.appendingPathComponent(s.packs[2].file))
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("meki-bad-\(UUID()).mekipack")
        defer { try? FileManager.default.removeItem(at: tmp) }
        for offset in [0, 8, 16, 200, 16384 + 100, good.count - 3] {
            var bad = good
            bad[offset] ^= 0x01
            try bad.write(to: tmp)
            XCTAssertThrowsError(try {
                let p = try MemoryPack(url: tmp)
                try p.verify()
            }(), "flip at \(offset) accepted")
        }
        try good.prefix(good.count - 8).write(to: tmp)
        XCTAssertThrowsError(try MemoryPack(url: tmp))
        try good.write(to: tmp)
        XCTAssertThrowsError(try MemoryPack(url: tmp, expectedFingerprint: String(repeating: "f", count: 32)))
    }

    func testXxh3KnownValues() {
        // xxhash.xxh3_64_intdigest(b"") and (b"a"), from the Python xxhash package
        XCTAssertEqual([UInt8]().withUnsafeBytes { Xxh3.hash($0) }, 0x2D06_8005_38D3_94C2)
        XCTAssertEqual([UInt8](arrayLiteral: 0x61).withUnsafeBytes { Xxh3.hash($0) }, 0xE6C6_32B6_1E96_4E1F)
    }

    func testManifestIsStrict() throws {
        let json = #"{"format":"meki-bundle","version":1,"name":"t","fingerprint":"0123456789abcdef00112233445566ff","memory":"none","config":{},"tokenizer":null,"memory_pack":null,"backbones":[{"target":"coreml","file":"m.mlpackage","quant":"none","max_seq_len":16,"prefill_len":4,"kv_cache":"internal","methods":{"prefill":{"inputs":[],"outputs":[]},"decode":{"inputs":[],"outputs":[]}}}],"files":[{"path":"m.mlpackage","sha256":"00","bytes":1}],"export":{}}"#
        let m = try BundleManifest.parse(Data(json.utf8))
        XCTAssertEqual(try m.backbone("coreml").prefillLen, 4)
        XCTAssertFalse(try m.backbone("coreml").takesMekiRows)
        let extra = json.replacingOccurrences(of: #""export":{}"#, with: #""export":{},"surprise":1"#)
        XCTAssertThrowsError(try BundleManifest.parse(Data(extra.utf8)))
    }
}
