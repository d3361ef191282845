#!/usr/bin/env bash
# Compile the Android-specific Java (meki-runtime/src/main, app/src/main, with src/core) against the
# REAL android.jar Debian ships (API 23, scripts/debian_sdk.sh; android.* and org.json are checked
# for real) and hand-written STUBS of the two libraries no Debian or PyPI package carries: ExecuTorch
# (org.pytorch.executorch, AAR 1.0.1) and LiteRT (com.google.ai.edge.litert, AAR 2.3.0). The stubs
# copy the signatures our code calls; they prove nothing about those libraries' real APIs (Gradle
# with the real AARs does). java.* is checked at the Java 8 API level (--release 8), which dx needs.
# Output: build/android/classes (ours only, ready for dx). Usage: android_app/scripts/stub_compile.sh
set -euo pipefail
APP="$(cd "$(dirname "$0")/.." && pwd)"
SDK="$("$APP/scripts/debian_sdk.sh")"
ANDROID_JAR="$SDK/usr/share/java/com.android.android-23.jar"
OUT="$APP/build/android"
rm -rf "$OUT" && mkdir -p "$OUT/stubsrc" "$OUT/stubs" "$OUT/classes"
stub() { mkdir -p "$OUT/stubsrc/$(dirname "$1")"; cat > "$OUT/stubsrc/$1"; }
stub org/pytorch/executorch/Tensor.java <<'J'
package org.pytorch.executorch;
public abstract class Tensor { public static Tensor fromBlob(long[] d, long[] s) { return null; }
  public static Tensor fromBlob(float[] d, long[] s) { return null; } public float[] getDataAsFloatArray() { return null; } }
J
stub org/pytorch/executorch/EValue.java <<'J'
package org.pytorch.executorch;
public class EValue { public static EValue from(Tensor t) { return null; } public Tensor toTensor() { return null; } }
J
stub org/pytorch/executorch/Module.java <<'J'
package org.pytorch.executorch;
public class Module { public static Module load(String path) { return null; }
  public EValue[] execute(String method, EValue... inputs) { return null; } public void destroy() {} }
J
# LiteRT Kotlin API as Java sees it (@Throws(LiteRtException::class), @JvmStatic, AutoCloseable handles)
stub com/google/ai/edge/litert/LiteRtException.java <<'J'
package com.google.ai.edge.litert;
public class LiteRtException extends Exception { public LiteRtException(String m) { super(m); } }
J
stub com/google/ai/edge/litert/Accelerator.java <<'J'
package com.google.ai.edge.litert;
public enum Accelerator { NONE, CPU, GPU, NPU }
J
stub com/google/ai/edge/litert/Environment.java <<'J'
package com.google.ai.edge.litert;
public class Environment implements AutoCloseable {
  public enum Option { CompilerPluginLibraryDir, DispatchLibraryDir }
  public static Environment create(java.util.Map<Option, String> options) throws LiteRtException { return null; }
  @Override public void close() {} }
J
stub com/google/ai/edge/litert/TensorBuffer.java <<'J'
package com.google.ai.edge.litert;
public class TensorBuffer implements AutoCloseable {
  public void writeFloat(float[] d) throws LiteRtException {} public void writeInt(int[] d) throws LiteRtException {}
  public void writeInt8(byte[] d) throws LiteRtException {}
  public float[] readFloat() throws LiteRtException { return null; } @Override public void close() {} }
J
stub com/google/ai/edge/litert/CompiledModel.java <<'J'
package com.google.ai.edge.litert;
public class CompiledModel implements AutoCloseable {
  public static class Options { public Options(Accelerator... a) {} }
  public static CompiledModel create(String filePath, Options o, Environment env) throws LiteRtException { return null; }
  public TensorBuffer createInputBuffer(String name, String signature) throws LiteRtException { return null; }
  public TensorBuffer createOutputBuffer(String name, String signature) throws LiteRtException { return null; }
  public void run(java.util.Map<String, TensorBuffer> in, java.util.Map<String, TensorBuffer> out, String signature)
      throws LiteRtException {}
  @Override public void close() {} }
J
find "$OUT/stubsrc" -name '*.java' > "$OUT/stubs.txt"
javac -nowarn --release 8 -d "$OUT/stubs" @"$OUT/stubs.txt"
find "$APP/meki-runtime/src/core/java" "$APP/meki-runtime/src/main/java" "$APP/app/src/main/java" -name '*.java' > "$OUT/files.txt"
javac -Xlint:all,-serial,-options -Werror --release 8 -cp "$ANDROID_JAR:$OUT/stubs" -d "$OUT/classes" @"$OUT/files.txt"
echo "stub_compile: $(grep -c . "$OUT/files.txt") files compiled against $(basename "$ANDROID_JAR") (real) and ExecuTorch/LiteRT stubs"
