import Foundation
#if canImport(Darwin)
import Darwin
#else
import Glibc
#endif

/// Every error of the memory-pack reader. `check` is the conformance/CHECKS.md name of the rule that
/// refused the file ("pack.magic", ...), the same name the Python, C++ and Java readers report.
public struct PackError: Error, CustomStringConvertible {
    public let check: String
    public let message: String
    public init(_ check: String, _ message: String) {
        self.check = check
        self.message = message
    }
    public var description: String { "\(message) [\(check)]" }
}

/// The checked 128-byte header of a v1 memory pack.
public struct PackHeader {
    public enum Dtype: UInt8 { case fp16 = 1, bf16 = 2, int8 = 3, int4 = 4 }
    public enum Layout: UInt8 { case tokenMajor = 0, layerMajor = 1 }

    /// A token's record is decoded whole; a larger one is refused (as in the C++ and Java readers).
    static let maxRecordBytes = 1 << 30

    public let vocabSize: Int, numLayers: Int, dMem: Int, groupSize: Int, rowBytes: Int
    public let dtype: Dtype, layout: Layout
    public let recordStride: Int, dataOffset: Int, dataSize: Int, blockSize: Int, numBlocks: Int
    public let tableOffset: Int, fileSize: Int, tableChecksum: UInt64
    public let fingerprint: String   // 32 lowercase hex

    public var dtypeName: String { ["fp16", "bf16", "int8", "int4"][Int(dtype.rawValue) - 1] }
    public var layoutName: String { layout == .tokenMajor ? "token-major" : "layer-major" }

    /// The sizes the formulas of PACK_FORMAT.md give, computed with overflow checks (Swift traps on
    /// overflow: an unchecked product of hostile fields would crash the app, not refuse the file).
    struct Derived { let stride: Int, dataSize: Int, blocks: Int, tableOffset: Int, fileSize: Int }

    static func derive(v: Int, l: Int, rowBytes rb: Int, layout: Layout, blockSize bs: Int) -> Derived? {
        let (vl, o1) = v.multipliedReportingOverflow(by: l)
        let (total, o2) = vl.multipliedReportingOverflow(by: rb)
        guard !o1, !o2, total <= 1 << 62 else { return nil }
        var stride = rb
        if layout == .tokenMajor {
            let (s, o3) = l.multipliedReportingOverflow(by: rb)
            guard !o3 else { return nil }
            stride = s
        }
        let dataSize = (total + bs - 1) / bs * bs
        let blocks = dataSize / bs
        return Derived(stride: stride, dataSize: dataSize, blocks: blocks, tableOffset: 16384 + dataSize,
                       fileSize: 16384 + dataSize + 8 * blocks)
    }

    static func rowBytes(_ dt: Dtype, _ m: Int, _ g: Int) -> Int {
        switch dt {
        case .fp16, .bf16: return 2 * m
        case .int8: return 4 + m
        case .int4: return g > 0 ? 4 * (m / g) + m / 2 : m / 2
        }
    }

    /// Checks 1-6 and 9 on the file's bytes, in the spec's order.
    init(_ b: UnsafeRawBufferPointer, expectedFingerprint: String?) throws {
        guard b.count >= 128 else {
            throw PackError("pack.too_short", "file is \(b.count) bytes, too small for a 128-byte pack header")
        }
        func u32(_ i: Int) -> Int { Int(UInt32(littleEndian: b.loadUnaligned(fromByteOffset: i, as: UInt32.self))) }
        func u64(_ i: Int) -> UInt64 { UInt64(littleEndian: b.loadUnaligned(fromByteOffset: i, as: UInt64.self)) }
        guard Array(b[0..<8]) == Array("MEKIPACK".utf8) else { throw PackError("pack.magic", "bad magic: not a MeKi memory pack") }
        guard u32(8) == 1 else { throw PackError("pack.version", "unsupported pack version \(u32(8)) (this reader reads version 1)") }
        guard Xxh3.hash(UnsafeRawBufferPointer(rebasing: b[0..<120])) == u64(120) else {
            throw PackError("pack.header_checksum", "header checksum mismatch: the header is damaged")
        }
        guard let dt = Dtype(rawValue: b[28]), let lay = Layout(rawValue: b[29]) else {
            throw PackError("pack.header_fields", "unknown dtype code \(b[28]) or layout code \(b[29])")
        }
        let v = u32(16), l = u32(20), m = u32(24), g = u32(32), bs = u32(56)
        let shapeOK = v >= 1 && v < 1 << 31 && l >= 1 && l < 1 << 31 && m >= 8 && m < 1 << 31 && m % 8 == 0
            && (dt != .int4 || (g >= 2 && g % 2 == 0 && m % g == 0))
            && bs >= 4096 && bs <= 16 << 20 && bs.nonzeroBitCount == 1
        guard shapeOK else { throw PackError("pack.header_fields", "invalid header: shape, group size or block size out of range") }
        let rb = PackHeader.rowBytes(dt, m, g)
        guard let d = PackHeader.derive(v: v, l: l, rowBytes: rb, layout: lay, blockSize: bs) else {
            throw PackError("pack.header_fields", "invalid header: pack too large (more than 2^62 data bytes)")
        }
        let reservedZero = b.loadUnaligned(fromByteOffset: 30, as: UInt16.self) == 0 && u64(104) == 0 && u64(112) == 0
        let wantGroup = dt == .int8 ? m : (dt == .int4 ? g : 0)
        // every comparison in 64 bits: a stored u32 never equals a value >= 2^32
        let ok = reservedZero && u32(12) == 128 && g == wantGroup && u32(36) == d.stride && u64(40) == 16384
            && u64(48) == UInt64(d.dataSize) && u32(60) == d.blocks && u64(64) == UInt64(d.tableOffset)
            && u64(72) == UInt64(d.fileSize)
        guard ok else { throw PackError("pack.header_fields", "inconsistent header fields (reserved, sizes or offsets)") }
        guard l * rb <= PackHeader.maxRecordBytes else {
            throw PackError("pack.header_fields", "a token record of \(l) x \(rb) bytes is over this reader's 1 GiB limit")
        }
        guard b.count == d.fileSize else {
            throw PackError("pack.file_size", "file is \(b.count) bytes but its header says \(d.fileSize)"
                            + (b.count < d.fileSize ? " (truncated)" : " (extra bytes)"))
        }
        vocabSize = v; numLayers = l; dMem = m; groupSize = g; rowBytes = rb; dtype = dt; layout = lay
        recordStride = d.stride; dataOffset = 16384; dataSize = d.dataSize; blockSize = bs; numBlocks = d.blocks
        tableOffset = d.tableOffset; fileSize = d.fileSize; tableChecksum = u64(96)
        fingerprint = b[80..<96].map { String(format: "%02x", $0) }.joined()
        if let want = expectedFingerprint, want != fingerprint {
            throw PackError("pack.fingerprint", "pack fingerprint \(fingerprint) does not match the model's \(want)")
        }
    }
}

/// An open memory pack, memory-mapped (`Data(contentsOf:options: .alwaysMapped)`): header, padding
/// and table checked on open, each data block checked the first time a lookup touches it.
/// Issue 12, class 2: a mapped file truncated by someone else raises SIGBUS on the next touch past
/// its end, which kills the app. The reader keeps the file open and checks its size (fstat) before
/// every touch of the mapping; a truncation between that check and the copy is not covered.
public final class MemoryPack {
    public let header: PackHeader
    private let data: Data
    private let fd: Int32
    private let sums: [UInt64]
    private var verified: [Bool]
    private var cache: [Int: [Float]] = [:], order: [Int] = []   // small LRU of dequantised records
    private let cacheEntries: Int
    private let lock = NSLock()

    public init(url: URL, expectedFingerprint: String? = nil, cacheEntries: Int = 4096) throws {
        var st = stat()
        guard stat(url.path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw PackError("pack.io", "cannot open pack \(url.path): missing or not a regular file")
        }
        let handle = open(url.path, O_RDONLY)
        guard handle >= 0 else { throw PackError("pack.io", "cannot open pack \(url.path)") }
        let mapped: Data
        let parsed: (PackHeader, [UInt64])
        do {   // locals first: self is not touched before every stored property is set
            mapped = try Data(contentsOf: url, options: .alwaysMapped)
            parsed = try mapped.withUnsafeBytes { (b: UnsafeRawBufferPointer) throws -> (PackHeader, [UInt64]) in
                let h = try PackHeader(b, expectedFingerprint: expectedFingerprint)
                guard b[128..<h.dataOffset].allSatisfy({ $0 == 0 }) else {
                    throw PackError("pack.padding", "header padding is not zero: the header region is damaged")
                }
                let t = UnsafeRawBufferPointer(rebasing: b[h.tableOffset..<h.fileSize])
                guard Xxh3.hash(t) == h.tableChecksum else {
                    throw PackError("pack.table_checksum", "checksum table does not match its checksum in the header")
                }
                return (h, (0..<h.numBlocks).map { UInt64(littleEndian: t.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self)) })
            }
        } catch let e as PackError {
            close(handle)
            throw e
        } catch {
            close(handle)
            throw PackError("pack.io", "cannot map pack \(url.path): \(error)")
        }
        data = mapped
        fd = handle
        header = parsed.0
        sums = parsed.1
        verified = Array(repeating: false, count: parsed.0.numBlocks)
        self.cacheEntries = cacheEntries
    }

    deinit { close(fd) }

    public var floatsPerToken: Int { header.numLayers * header.dMem }

    /// tokens [T] -> dequantised rows [T, L, m] (row-major float32).
    public func lookup(_ tokens: [Int]) throws -> [Float] {
        var out: [Float] = []
        out.reserveCapacity(tokens.count * floatsPerToken)
        for t in tokens {
            guard t >= 0 && t < header.vocabSize else { throw PackError("pack.token", "token id \(t) out of range [0, \(header.vocabSize))") }
            out.append(contentsOf: try record(t))
        }
        return out
    }

    /// Check every data block; throws naming the first bad one.
    public func verify() throws {
        for b in 0..<header.numBlocks { try checkBlock(b) }
    }

    /// Refuse before touching the mapping if the file shrank (see the class comment).
    private func checkStillWhole() throws {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw PackError("pack.io", "cannot stat the open pack") }
        guard Int(st.st_size) >= header.fileSize else {
            throw PackError("pack.file_size", "the pack shrank to \(st.st_size) bytes while open (header says \(header.fileSize))")
        }
    }

    private func record(_ tok: Int) throws -> [Float] {
        lock.lock()
        if let hit = cache[tok] { lock.unlock(); return hit }
        lock.unlock()
        let h = header
        var rec = [Float](repeating: 0, count: floatsPerToken)
        for l in 0..<h.numLayers {
            let off = h.layout == .tokenMajor ? h.dataOffset + tok * h.recordStride + l * h.rowBytes
                                              : h.dataOffset + (l * h.vocabSize + tok) * h.rowBytes
            for b in ((off - h.dataOffset) / h.blockSize)...((off + h.rowBytes - 1 - h.dataOffset) / h.blockSize) {
                try checkBlock(b)
            }
            try checkStillWhole()
            data.withUnsafeBytes { raw in
                RowCodec.decode(UnsafeRawBufferPointer(rebasing: raw[off..<(off + h.rowBytes)]), h, into: &rec, at: l * h.dMem)
            }
        }
        lock.lock()
        if cacheEntries > 0 && cache[tok] == nil {
            cache[tok] = rec
            order.append(tok)
            if order.count > cacheEntries { cache[order.removeFirst()] = nil }
        }
        lock.unlock()
        return rec
    }

    private func checkBlock(_ b: Int) throws {
        lock.lock()
        let done = verified[b]
        lock.unlock()
        if done { return }
        try checkStillWhole()
        let start = header.dataOffset + b * header.blockSize
        let got = data.withUnsafeBytes { Xxh3.hash(UnsafeRawBufferPointer(rebasing: $0[start..<(start + header.blockSize)])) }
        guard got == sums[b] else {
            throw PackError("pack.block_checksum", "data block \(b) (bytes \(start)..\(start + header.blockSize)) does not match its checksum: the pack is damaged")
        }
        lock.lock()
        verified[b] = true
        lock.unlock()
    }
}

/// Dequantisation exactly as PACK_FORMAT.md section 3 writes it (float32 arithmetic).
enum RowCodec {
    static func decode(_ r: UnsafeRawBufferPointer, _ h: PackHeader, into out: inout [Float], at o: Int) {
        func f32(_ i: Int) -> Float { Float(bitPattern: UInt32(littleEndian: r.loadUnaligned(fromByteOffset: i, as: UInt32.self))) }
        func u16(_ i: Int) -> UInt16 { UInt16(littleEndian: r.loadUnaligned(fromByteOffset: i, as: UInt16.self)) }
        switch h.dtype {
        case .fp16:
            for i in 0..<h.dMem { out[o + i] = halfToFloat(u16(2 * i)) }
        case .bf16:
            for i in 0..<h.dMem { out[o + i] = Float(bitPattern: UInt32(u16(2 * i)) << 16) }
        case .int8:
            let scale = f32(0)
            for i in 0..<h.dMem { out[o + i] = Float(Int8(bitPattern: r[4 + i])) * scale }
        case .int4:
            let g = h.groupSize, values = 4 * (h.dMem / g)
            for j in 0..<(h.dMem / 2) {
                let byte = Int(r[values + j]), i = 2 * j
                out[o + i] = Float((byte & 0x0F) - 8) * f32(4 * (i / g))
                out[o + i + 1] = Float((byte >> 4) - 8) * f32(4 * ((i + 1) / g))
            }
        }
    }

    /// binary16 bits -> Float, exact (Float16 is unavailable on Intel macOS).
    static func halfToFloat(_ bits: UInt16) -> Float {
        let sign: UInt32 = UInt32(bits & 0x8000) << 16, exp = UInt32(bits >> 10) & 0x1F, mant = UInt32(bits & 0x3FF)
        if exp == 0x1F { return Float(bitPattern: sign | 0x7F80_0000 | (mant << 13)) }
        if exp != 0 { return Float(bitPattern: sign | ((exp + 112) << 23) | (mant << 13)) }
        let v = Float(mant) * 0x1p-24
        return sign != 0 ? -v : v
    }
}
