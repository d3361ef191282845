package ai.meki.runtime;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** Damaged copies of the golden packs are refused with the PackException of the right check. */
class MemoryPackCorruptionTest {
    static final String[] FILES = {"golden_int8_token.mekipack", "golden_int4_token.mekipack",
            "golden_fp16_token.mekipack", "golden_int8_layer.mekipack"};
    static final String FP = "0123456789abcdef00112233445566ff";

    @TempDir Path tmp;

    byte[] golden(String file) throws Exception {
        return Files.readAllBytes(Golden.dir().resolve(file));
    }

    /** Open (both modes), look up every token, verify: each must throw; returns the first error. */
    PackException refused(byte[] data) throws Exception {
        Path p = tmp.resolve("bad.mekipack");
        Files.write(p, data);
        PackException first = null;
        for (MemoryPack.Mode mode : MemoryPack.Mode.values()) {
            for (boolean full : new boolean[] {false, true}) {
                try (MemoryPack pack = MemoryPack.open(p, new MemoryPack.Options().mode(mode).cacheBytes(1 << 16))) {
                    if (full) {
                        pack.verify();
                    } else {
                        int[] all = new int[pack.vocabSize()];
                        for (int t = 0; t < all.length; t++) all[t] = t;
                        pack.lookup(all);
                    }
                    fail("damaged pack accepted (" + mode + (full ? ", verify)" : ", lookup)"));
                } catch (PackException e) {
                    if (first == null) first = e;
                }
            }
        }
        return first;
    }

    @ParameterizedTest
    @ValueSource(strings = {"golden_int8_token.mekipack", "golden_int4_token.mekipack",
            "golden_fp16_token.mekipack", "golden_int8_layer.mekipack", "golden_bf16_token.mekipack"})
    void bitFlipsAnywhereAreRefused(String file) throws Exception {
        byte[] good = golden(file);
        PackHeader h = PackHeader.parse(good, good.length, null);
        long dataEnd = h.dataOffset + (long) h.vocabSize * h.numLayers * h.rowBytes;
        long[][] regions = {{0, 128}, {128, h.dataOffset}, {h.dataOffset, dataEnd}, {dataEnd, h.tableOffset},
                {h.tableOffset, h.fileSize}};
        Random rng = new Random(file.hashCode());
        for (long[] r : regions) {
            for (int k = 0; k < 6; k++) {
                byte[] bad = good.clone();
                int off = (int) (r[0] + (long) (rng.nextDouble() * (r[1] - r[0])));
                bad[off] ^= (byte) (1 << rng.nextInt(8));
                assertTrue(refused(bad).getMessage().length() > 0, "offset " + off);
            }
        }
    }

    @Test
    void checksInSpecOrder() throws Exception {
        byte[] good = golden(FILES[0]);
        assertThrows(PackException.Truncated.class, () -> PackHeader.parse(Arrays.copyOf(good, 100), 100, null));
        byte[] magic = good.clone();
        magic[0] = 'X';
        assertEquals("bad magic: not a MeKi memory pack", refused(magic).getMessage());
        byte[] v2 = good.clone();
        v2[8] = 2;   // version checked before the header checksum, so a newer file is named
        assertEquals("unsupported pack version 2 (this reader reads version 1)", refused(v2).getMessage());
        byte[] hdr = good.clone();
        hdr[16] ^= 1;
        assertTrue(refused(hdr) instanceof PackException.Checksum);
        assertTrue(refused(Arrays.copyOf(good, good.length - 8)) instanceof PackException.Truncated);
        assertTrue(refused(Arrays.copyOf(good, good.length + 1)) instanceof PackException.Truncated);
    }

    @Test
    void inconsistentHeaderWithValidChecksumIsAFormatError() throws Exception {
        byte[] bad = golden(FILES[0]).clone();
        ByteBuffer b = ByteBuffer.wrap(bad).order(ByteOrder.LITTLE_ENDIAN);
        b.putInt(36, b.getInt(36) + 1);                       // record_stride off by one
        b.putLong(120, Xxh3.hash(b, 0, 120));                 // re-sealed header
        PackException e = refused(bad);
        assertTrue(e instanceof PackException.Format && e.getMessage().startsWith("inconsistent header"), e.getMessage());
        byte[] dtype = golden(FILES[0]).clone();
        ByteBuffer d = ByteBuffer.wrap(dtype).order(ByteOrder.LITTLE_ENDIAN);
        d.put(28, (byte) 9);
        d.putLong(120, Xxh3.hash(d, 0, 120));
        assertTrue(refused(dtype).getMessage().startsWith("unknown dtype code 9"));
    }

    @Test
    void dataFlipNamesTheBlockAndOtherBlocksStillRead() throws Exception {
        byte[] bad = golden(FILES[0]).clone();
        PackHeader h = PackHeader.parse(bad, bad.length, null);
        long off = h.dataOffset + h.blockSize + 100;   // the golden packs have 2 blocks
        bad[(int) off] ^= 0x10;
        Path p = tmp.resolve("b.mekipack");
        Files.write(p, bad);
        try (MemoryPack pack = MemoryPack.open(p, new MemoryPack.Options())) {
            PackException e = assertThrows(PackException.Checksum.class, pack::verify);
            assertTrue(e.getMessage().startsWith("data block 1 "), e.getMessage());
            pack.lookup(new int[] {0});
            int tok = (int) ((off - h.dataOffset) / h.recordStride);
            assertThrows(PackException.Checksum.class, () -> pack.lookup(new int[] {tok}));
        }
    }

    @Test
    void wrongFingerprintIsRefused() throws Exception {
        Path p = Golden.dir().resolve(FILES[0]);
        PackException e = assertThrows(PackException.Fingerprint.class,
                () -> MemoryPack.open(p, new MemoryPack.Options().expectFingerprint("ffffffffffffffffffffffffffffffff")));
        assertTrue(e.getMessage().contains(FP));
        MemoryPack.open(p, new MemoryPack.Options().expectFingerprint(FP)).close();
    }

    @Test
    void halfFloatEdgeCases() {
        assertEquals(0x1p-24f, RowCodec.halfToFloat((short) 0x0001));
        assertEquals(65504f, RowCodec.halfToFloat((short) 0x7BFF));
        assertEquals(-2f, RowCodec.halfToFloat((short) 0xC000));
        assertEquals(Float.POSITIVE_INFINITY, RowCodec.halfToFloat((short) 0x7C00));
        assertTrue(Float.isNaN(RowCodec.halfToFloat((short) 0x7E00)));
        assertEquals(Float.floatToRawIntBits(-0f), Float.floatToRawIntBits(RowCodec.halfToFloat((short) 0x8000)));
    }
}
