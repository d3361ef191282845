import Foundation

/// Every error of the memory-pack reader; the case says which check (PACK_FORMAT.md section 5) refused it.
public enum PackError: Error, CustomStringConvertible {
    case format(String), truncated(String), checksum(String), fingerprint(String), token(String)

    public var description: String {
        switch self {
        case .format(let m), .truncated(let m), .checksum(let m), .fingerprint(let m), .token(let m): return m
        }
    }
}

/// The checked 128-byte header of a v1 memory pack.
public struct PackHeader {
    public enum Dtype: UInt8 { case fp16 = 1, bf16 = 2, int8 = 3, int4 = 4 }
    public enum Layout: UInt8 { case tokenMajor = 0, layerMajor = 1 }

    public let vocabSize: Int, numLayers: Int, dMem: Int, groupSize: Int, rowBytes: Int
    public let dtype: Dtype, layout: Layout
    public let recordStride: Int, dataOffset: Int, dataSize: Int, blockSize: Int, numBlocks: Int
    public let tableOffset: Int, fileSize: Int, tableChecksum: UInt64
    public let fingerprint: String   // 32 lowercase hex

    public var dtypeName: String { ["fp16", "bf16", "int8", "int4"][Int(dtype.rawValue) - 1] }
    public var layoutName: String { layout == .tokenMajor ? "token-major" : "layer-major" }

    /// Checks 1-6 and 9 on the file's bytes.
    init(_ b: UnsafeRawBufferPointer, expectedFingerprint: String?) throws {
        guard b.count >= 128 else {
            throw PackError.truncated("file is \(b.count) bytes, too small for a 128-byte pack header")
        }
        func u32(_ i: Int) -> Int { Int(UInt32(littleEndian: b.loadUnaligned(fromByteOffset: i, as: UInt32.self))) }
        func u64(_ i: Int) -> UInt64 { UInt64(littleEndian: b.loadUnaligned(fromByteOffset: i, as: UInt64.self)) }
        guard Array(b[0..<8]) == Array("MEKIPACK".utf8) else { throw PackError.format("bad magic: not a MeKi memory pack") }
        guard u32(8) == 1 else { throw PackError.format("unsupported pack version \(u32(8)) (this reader reads version 1)") }
        guard Xxh3.hash(UnsafeRawBufferPointer(rebasing: b[0..<120])) == u64(120) else {
            throw PackError.checksum("header checksum mismatch: the header is damaged")
        }
        guard let dt = Dtype(rawValue: b[28]), let lay = Layout(rawValue: b[29]) else {
            throw PackError.format("unknown dtype code \(b[28]) or layout code \(b[29])")
        }
        dtype = dt
        layout = lay
        vocabSize = u32(16)
        numLayers = u32(20)
        dMem = u32(24)
        groupSize = u32(32)
        recordStride = u32(36)
        dataOffset = Int(truncatingIfNeeded: u64(40))
        dataSize = Int(truncatingIfNeeded: u64(48))
        blockSize = u32(56)
        numBlocks = u32(60)
        tableOffset = Int(truncatingIfNeeded: u64(64))
        fileSize = Int(truncatingIfNeeded: u64(72))
        tableChecksum = u64(96)
        fingerprint = b[80..<96].map { String(format: "%02x", $0) }.joined()
        switch dt {
        case .fp16, .bf16: rowBytes = 2 * dMem
        case .int8: rowBytes = 4 + dMem
        case .int4: rowBytes = groupSize > 0 ? 4 * (dMem / groupSize) + dMem / 2 : dMem / 2
        }
        try checkDerived(reservedZero: b.loadUnaligned(fromByteOffset: 30, as: UInt16.self) == 0
                         && u64(104) == 0 && u64(112) == 0 && u32(12) == 128)
        guard b.count == fileSize else {
            throw PackError.truncated("file is \(b.count) bytes but its header says \(fileSize)"
                                      + (b.count < fileSize ? " (truncated)" : " (extra bytes)"))
        }
        if let want = expectedFingerprint, want != fingerprint {
            throw PackError.fingerprint("pack fingerprint \(fingerprint) does not match the model's \(want)")
        }
    }

    /// Check 5: shapes, reserved fields and every derived size against the spec's formulas.
    private func checkDerived(reservedZero: Bool) throws {
        let shapeOK = vocabSize >= 1 && vocabSize < 1 << 31 && numLayers >= 1 && numLayers < 1 << 31
            && dMem >= 1 && dMem % 8 == 0
            && (dtype != .int4 || (groupSize >= 2 && groupSize % 2 == 0 && dMem % groupSize == 0))
            && blockSize >= 4096 && blockSize <= 16 << 20 && blockSize.nonzeroBitCount == 1
        guard shapeOK else { throw PackError.format("invalid header: shape, group size or block size out of range") }
        let wantGroup = dtype == .int8 ? dMem : (dtype == .int4 ? groupSize : 0)
        let records = vocabSize * numLayers * rowBytes
        let wantData = (records + blockSize - 1) / blockSize * blockSize
        let ok = reservedZero && groupSize == wantGroup
            && recordStride == (layout == .tokenMajor ? numLayers * rowBytes : rowBytes)
            && dataOffset == 16384 && dataSize == wantData && numBlocks == wantData / blockSize
            && tableOffset == 16384 + wantData && fileSize == tableOffset + 8 * numBlocks
        guard ok else { throw PackError.format("inconsistent header fields (reserved, sizes or offsets)") }
    }
}

/// An open memory pack, memory-mapped (`Data(contentsOf:options: .alwaysMapped)`): header, padding
/// and table checked on open, each data block checked the first time a lookup touches it.
public final class MemoryPack {
    public let header: PackHeader
    private let data: Data
    private let sums: [UInt64]
    private var verified: [Bool]
    private var cache: [Int: [Float]] = [:], order: [Int] = []   // small LRU of dequantised records
    private let cacheEntries: Int
    private let lock = NSLock()

    public init(url: URL, expectedFingerprint: String? = nil, cacheEntries: Int = 4096) throws {
        data = try Data(contentsOf: url, options: .alwaysMapped)
        self.cacheEntries = cacheEntries
        let (h, table): (PackHeader, [UInt64]) = try data.withUnsafeBytes { b in
            let h = try PackHeader(b, expectedFingerprint: expectedFingerprint)
            guard b[128..<h.dataOffset].allSatisfy({ $0 == 0 }) else {
                throw PackError.checksum("header padding is not zero: the header region is damaged")
            }
            let t = UnsafeRawBufferPointer(rebasing: b[h.tableOffset..<h.fileSize])
            guard Xxh3.hash(t) == h.tableChecksum else {
                throw PackError.checksum("checksum table does not match its checksum in the header")
            }
            return (h, (0..<h.numBlocks).map { UInt64(littleEndian: t.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self)) })
        }
        header = h
        sums = table
        verified = Array(repeating: false, count: h.numBlocks)
    }

    public var floatsPerToken: Int { header.numLayers * header.dMem }

    /// tokens [T] -> dequantised rows [T, L, m] (row-major float32).
    public func lookup(_ tokens: [Int]) throws -> [Float] {
        var out: [Float] = []
        out.reserveCapacity(tokens.count * floatsPerToken)
        for t in tokens {
            guard t >= 0 && t < header.vocabSize else { throw PackError.token("token id \(t) out of range [0, \(header.vocabSize))") }
            out.append(contentsOf: try record(t))
        }
        return out
    }

    /// Check every data block; throws naming the first bad one.
    public func verify() throws {
        for b in 0..<header.numBlocks { try checkBlock(b) }
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
        let start = header.dataOffset + b * header.blockSize
        let got = data.withUnsafeBytes { Xxh3.hash(UnsafeRawBufferPointer(rebasing: $0[start..<(start + header.blockSize)])) }
        guard got == sums[b] else {
            throw PackError.checksum("data block \(b) (bytes \(start)..\(start + header.blockSize)) does not match its checksum: the pack is damaged")
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
