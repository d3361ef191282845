import Foundation
import XCTest

@testable import MekiBridge

/// The Swift readers over conformance/index.json: each case refused with the check name it lists
/// ("ok" when accepted). Same procedure as the Python, C++ and Java runners (conformance/CHECKS.md):
/// pack: open(expected fingerprint) -> lookup(tokens) -> verify() -> rows equal the golden JSON;
/// bundle: BundleManifest.verify(sha256 on) -> open the pack -> PackRef.check(header).
/// Not run on this project's Linux CI (no Swift toolchain): `swift test` on a Mac, from a checkout.
final class ConformanceTests: XCTestCase {
    struct Index: Decodable {
        struct Case: Decodable {
            let id: String, kind: String, path: String, expect: String
            let check: String?, fingerprint: String?, rows: String?
            let tokens: [Int]?
        }
        let checks: [String]
        let cases: [Case]
    }

    static var root: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../conformance").standardized
    }

    func outcome(pack c: Index.Case) -> String {
        do {
            let url = Self.root.appendingPathComponent(c.path)
            let p = try MemoryPack(url: url, expectedFingerprint: c.fingerprint)
            let tokens = c.tokens ?? [0]
            let got = try p.lookup(tokens)
            try p.verify()
            if let rows = c.rows {
                let spec = try JSONDecoder().decode(MemoryPackGoldenTests.Spec.self,
                                                    from: Data(contentsOf: Self.root.appendingPathComponent(rows)))
                if let entry = spec.packs.first(where: { $0.file == url.lastPathComponent }) {
                    for (i, t) in tokens.enumerated() {
                        let want = entry.rows[String(t)]!.flatMap { $0.map { Float($0) } }
                        if Array(got[(i * want.count)..<((i + 1) * want.count)]) != want { return "rows differ" }
                    }
                }
            }
            return "ok"
        } catch let e as PackError {
            return e.check
        } catch {
            return "unexpected \(error)"
        }
    }

    func outcome(bundle c: Index.Case) -> String {
        do {
            let dir = Self.root.appendingPathComponent(c.path)
            let m = try BundleManifest.verify(dir, checkHashes: true)
            if let ref = m.memoryPack {
                let p = try MemoryPack(url: dir.appendingPathComponent(ref.file), expectedFingerprint: m.fingerprint)
                try ref.check(p.header)
            }
            return "ok"
        } catch let e as BundleError {
            return e.check
        } catch let e as PackError {
            return e.check
        } catch {
            return "unexpected \(error)"
        }
    }

    func testEveryCase() throws {
        let index = try JSONDecoder().decode(Index.self, from: Data(contentsOf: Self.root.appendingPathComponent("index.json")))
        var wrong: [String] = []
        var ran = 0
        for c in index.cases where c.kind == "pack" || c.kind == "bundle" {
            let want = c.expect == "ok" ? "ok" : (c.check ?? "?")
            let got = c.kind == "pack" ? outcome(pack: c) : outcome(bundle: c)
            ran += 1
            if got != want { wrong.append("\(c.id): expected \(want), got \(got)") }
        }
        XCTAssertGreaterThan(ran, 100)
        XCTAssertEqual(wrong, [], wrong.joined(separator: "\n"))
    }

    /// Issue 12, class 2: the file shrinks under an open mapped reader; refused, not SIGBUS.
    func testPackShrunkWhileMappedIsRefused() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("meki-shrink-\(UUID()).mekipack")
        defer { try? FileManager.default.removeItem(at: tmp) }
        try FileManager.default.copyItem(at: Self.root.appendingPathComponent("golden/golden_int8_token.mekipack"), to: tmp)
        let p = try MemoryPack(url: tmp, cacheEntries: 0)
        _ = try p.lookup([0])
        XCTAssertEqual(truncate(tmp.path, 16384), 0)
        for tok in [99, 0] {
            XCTAssertThrowsError(try p.lookup([tok])) { e in XCTAssertEqual((e as? PackError)?.check, "pack.file_size") }
        }
    }
}
