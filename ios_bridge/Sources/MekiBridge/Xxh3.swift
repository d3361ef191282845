/// XXH3 64-bit (xxHash >= 0.8, seed 0, default secret): the only hash of the memory-pack format.
/// Same algorithm as the Java reader's Xxh3 (checked there against the Python xxhash package).
public enum Xxh3 {
    static let p32_1: UInt64 = 0x9E37_79B1, p32_2: UInt64 = 0x85EB_CA77, p32_3: UInt64 = 0xC2B2_AE3D
    static let p64_1: UInt64 = 0x9E37_79B1_85EB_CA87, p64_2: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    static let p64_3: UInt64 = 0x1656_67B1_9E37_79F9, p64_4: UInt64 = 0x85EB_CA77_C2B2_AE63
    static let p64_5: UInt64 = 0x27D4_EB2F_1656_67C5
    static let mx1: UInt64 = 0x1656_6791_9E37_79F9, mx2: UInt64 = 0x9FB2_1C65_1E98_DF25
    static let secret: [UInt8] = [
        0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
        0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
        0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
        0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
        0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
        0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
        0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
        0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
        0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
        0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
        0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
        0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
    ]

    /// xxh3_64 of the bytes.
    public static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        secret.withUnsafeBytes { sec in
            let s = Reader(base: sec), input = Reader(base: bytes), n = bytes.count
            if n <= 16 { return len0to16(input, n, s) }
            if n <= 128 { return len17to128(input, n, s) }
            if n <= 240 { return len129to240(input, n, s) }
            return hashLong(input, n, s)
        }
    }

    struct Reader {
        let base: UnsafeRawBufferPointer
        func u64(_ i: Int) -> UInt64 { UInt64(littleEndian: base.loadUnaligned(fromByteOffset: i, as: UInt64.self)) }
        func u32(_ i: Int) -> UInt64 { UInt64(UInt32(littleEndian: base.loadUnaligned(fromByteOffset: i, as: UInt32.self))) }
        func u8(_ i: Int) -> UInt64 { UInt64(base[i]) }
    }

    static func xorshift(_ v: UInt64, _ s: UInt64) -> UInt64 { v ^ (v >> s) }

    static func mulFold64(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (hi, lo) = a.multipliedFullWidth(by: b)
        return hi ^ lo
    }

    static func xxh64Avalanche(_ h0: UInt64) -> UInt64 {
        var h = xorshift(h0, 33) &* p64_2
        h = xorshift(h, 29) &* p64_3
        return xorshift(h, 32)
    }

    static func avalanche(_ h: UInt64) -> UInt64 { xorshift(xorshift(h, 37) &* mx1, 32) }

    static func rotl(_ v: UInt64, _ r: UInt64) -> UInt64 { (v << r) | (v >> (64 - r)) }

    static func len0to16(_ p: Reader, _ n: Int, _ s: Reader) -> UInt64 {
        if n > 8 {
            let lo = p.u64(0) ^ (s.u64(24) ^ s.u64(32)), hi = p.u64(n - 8) ^ (s.u64(40) ^ s.u64(48))
            return avalanche(UInt64(n) &+ lo.byteSwapped &+ hi &+ mulFold64(lo, hi))
        }
        if n >= 4 {
            var h = (p.u32(n - 4) &+ (p.u32(0) << 32)) ^ (s.u64(8) ^ s.u64(16))
            h ^= rotl(h, 49) ^ rotl(h, 24)
            h = h &* mx2
            h ^= (h >> 35) &+ UInt64(n)
            h = h &* mx2
            return xorshift(h, 28)
        }
        if n > 0 {
            let combined = (p.u8(0) << 16) | (p.u8(n >> 1) << 24) | p.u8(n - 1) | (UInt64(n) << 8)
            return xxh64Avalanche(combined ^ (s.u32(0) ^ s.u32(4)))
        }
        return xxh64Avalanche(s.u64(56) ^ s.u64(64))
    }

    static func mix16(_ p: Reader, _ off: Int, _ s: Reader, _ so: Int) -> UInt64 {
        mulFold64(p.u64(off) ^ s.u64(so), p.u64(off + 8) ^ s.u64(so + 8))
    }

    static func len17to128(_ p: Reader, _ n: Int, _ s: Reader) -> UInt64 {
        var acc = UInt64(n) &* p64_1
        if n > 32 {
            if n > 64 {
                if n > 96 { acc = acc &+ mix16(p, 48, s, 96) &+ mix16(p, n - 64, s, 112) }
                acc = acc &+ mix16(p, 32, s, 64) &+ mix16(p, n - 48, s, 80)
            }
            acc = acc &+ mix16(p, 16, s, 32) &+ mix16(p, n - 32, s, 48)
        }
        acc = acc &+ mix16(p, 0, s, 0) &+ mix16(p, n - 16, s, 16)
        return avalanche(acc)
    }

    static func len129to240(_ p: Reader, _ n: Int, _ s: Reader) -> UInt64 {
        var acc = UInt64(n) &* p64_1
        for i in 0..<8 { acc = acc &+ mix16(p, 16 * i, s, 16 * i) }
        acc = avalanche(acc)
        for i in 8..<(n / 16) { acc = acc &+ mix16(p, 16 * i, s, 16 * (i - 8) + 3) }
        acc = acc &+ mix16(p, n - 16, s, 136 - 17)
        return avalanche(acc)
    }

    static func hashLong(_ p: Reader, _ n: Int, _ s: Reader) -> UInt64 {
        var acc: [UInt64] = [p32_3, p64_1, p64_2, p64_3, p64_4, p32_2, p64_5, p32_1]
        let stripesPerBlock = (192 - 64) / 8, blockLen = 64 * stripesPerBlock
        let blocks = (n - 1) / blockLen
        for b in 0..<blocks {
            for k in 0..<stripesPerBlock { accumulate512(&acc, p, b * blockLen + 64 * k, s, 8 * k) }
            for i in 0..<8 { acc[i] = (xorshift(acc[i], 47) ^ s.u64(192 - 64 + 8 * i)) &* p32_1 }
        }
        let stripes = ((n - 1) - blockLen * blocks) / 64
        for k in 0..<stripes { accumulate512(&acc, p, blocks * blockLen + 64 * k, s, 8 * k) }
        accumulate512(&acc, p, n - 64, s, 192 - 64 - 7)
        var result = UInt64(n) &* p64_1
        for i in 0..<4 {
            result = result &+ mulFold64(acc[2 * i] ^ s.u64(11 + 16 * i), acc[2 * i + 1] ^ s.u64(11 + 16 * i + 8))
        }
        return avalanche(result)
    }

    static func accumulate512(_ acc: inout [UInt64], _ p: Reader, _ off: Int, _ s: Reader, _ so: Int) {
        for i in 0..<8 {
            let v = p.u64(off + 8 * i), k = v ^ s.u64(so + 8 * i)
            acc[i ^ 1] = acc[i ^ 1] &+ v
            acc[i] = acc[i] &+ (k & 0xFFFF_FFFF) &* (k >> 32)
        }
    }
}
