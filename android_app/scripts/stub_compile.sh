#!/usr/bin/env bash
# Compile-only check of the Android-specific Java (meki-runtime/src/main, app/src/main) against
# hand-written STUBS of the few Android and ExecuTorch signatures it uses (no android.jar or
# executorch AAR is available from Debian). It catches typos and type errors in our code; it does
# NOT prove the real APIs match the stubs. Usage: android_app/scripts/stub_compile.sh
set -euo pipefail
APP="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$APP/build/stubcheck"
rm -rf "$OUT" && mkdir -p "$OUT/src" "$OUT/classes"
stub() { mkdir -p "$OUT/src/$(dirname "$1")"; cat > "$OUT/src/$1"; }
stub android/content/Context.java <<'J'
package android.content;
public abstract class Context { public abstract android.content.res.AssetManager getAssets();
  public abstract java.io.File getNoBackupFilesDir(); public abstract java.io.File getFilesDir(); }
J
stub android/content/Intent.java <<'J'
package android.content;
public class Intent { public String getStringExtra(String k) { return null; } public boolean hasExtra(String k) { return false; }
  public int getIntExtra(String k, int d) { return d; } }
J
stub android/content/res/AssetManager.java <<'J'
package android.content.res;
public final class AssetManager { public java.io.InputStream open(String p) throws java.io.IOException { return null; }
  public AssetFileDescriptor openFd(String p) throws java.io.IOException { return null; } }
J
stub android/content/res/AssetFileDescriptor.java <<'J'
package android.content.res;
public class AssetFileDescriptor implements java.io.Closeable { public java.io.FileDescriptor getFileDescriptor() { return null; }
  public long getStartOffset() { return 0; } public long getLength() { return 0; } public void close() throws java.io.IOException {} }
J
stub android/app/Activity.java <<'J'
package android.app;
public class Activity extends android.content.Context { protected void onCreate(android.os.Bundle b) {} protected void onDestroy() {}
  public android.content.Intent getIntent() { return null; } public void finish() {} public void runOnUiThread(Runnable r) {}
  public void setContentView(android.view.View v) {}
  public android.content.res.AssetManager getAssets() { return null; } public java.io.File getNoBackupFilesDir() { return null; }
  public java.io.File getFilesDir() { return null; } }
J
stub android/os/Bundle.java <<'J'
package android.os;
public final class Bundle {}
J
stub android/util/Log.java <<'J'
package android.util;
public final class Log { public static int i(String t, String m) { return 0; } public static int e(String t, String m) { return 0; } }
J
stub android/view/View.java <<'J'
package android.view;
public class View { public View(android.content.Context c) {} public interface OnClickListener { void onClick(View v); }
  public void setOnClickListener(OnClickListener l) {} public void setEnabled(boolean e) {} }
J
stub android/view/ViewGroup.java <<'J'
package android.view;
public class ViewGroup extends View { public ViewGroup(android.content.Context c) { super(c); } public void addView(View v) {} }
J
stub android/widget/LinearLayout.java <<'J'
package android.widget;
public class LinearLayout extends android.view.ViewGroup { public static final int VERTICAL = 1;
  public LinearLayout(android.content.Context c) { super(c); } public void setOrientation(int o) {} }
J
stub android/widget/ScrollView.java <<'J'
package android.widget;
public class ScrollView extends android.view.ViewGroup { public ScrollView(android.content.Context c) { super(c); } }
J
stub android/widget/TextView.java <<'J'
package android.widget;
public class TextView extends android.view.View { public TextView(android.content.Context c) { super(c); }
  public void setText(CharSequence s) {} public void append(CharSequence s) {} public void setHint(CharSequence s) {}
  public CharSequence getText() { return ""; } }
J
stub android/widget/EditText.java <<'J'
package android.widget;
public class EditText extends TextView { public EditText(android.content.Context c) { super(c); }
  public android.text.Editable getText() { return null; } }
J
stub android/text/Editable.java <<'J'
package android.text;
public interface Editable extends CharSequence {}
J
stub android/widget/Button.java <<'J'
package android.widget;
public class Button extends TextView { public Button(android.content.Context c) { super(c); } }
J
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
find "$OUT/src" "$APP/meki-runtime/src/core/java" "$APP/meki-runtime/src/main/java" "$APP/app/src/main/java" \
    -name '*.java' > "$OUT/files.txt"
javac -Xlint:all,-serial,-options -Werror --release 11 -cp /usr/share/java/com.android.json.jar \
    -d "$OUT/classes" @"$OUT/files.txt"
echo "stub_compile: Android-specific sources compiled against stubs ($(grep -c . "$OUT/files.txt") files)"
