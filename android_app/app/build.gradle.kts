plugins { id("com.android.application") }

// Written by `meki bundle BUNDLE --android android_app`: extensions to store uncompressed, asset pack.
val mekiBundle = java.util.Properties().apply {
    rootProject.file("meki-bundle.properties").takeIf { it.exists() }?.inputStream()?.use { load(it) }
}

android {
    namespace = "ai.meki.app"
    compileSdk = 35
    defaultConfig {
        applicationId = "ai.meki.app"
        minSdk = 26          // java.nio.file (FileChannel.open(Path)) and AssetFileDescriptor offsets
        targetSdk = 35       // Android 15: 16 KiB page devices
        versionCode = 1
        versionName = "0.1.0"
        ndk { abiFilters += listOf("arm64-v8a") }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_11
        targetCompatibility = JavaVersion.VERSION_11
    }
    // The memory pack is mapped in place from the APK: it must be stored, not deflated.
    // .pte is stored too (copied out once; deflating a GB program buys nothing).
    androidResources {
        noCompress += listOf("mekipack", "pte")
        noCompress += mekiBundle.getProperty("noCompress", "").split(",").filter { it.isNotBlank() }
    }
    // Uncompressed, 16 KiB-aligned .so files (ExecuTorch's JNI library) for 16 KiB page devices.
    // With the QNN runtime in jniLibs (tflite-qnn, README "Qualcomm NPU"), the libraries are
    // extracted instead: LiteRT's dispatch library and the DSP's skel are loaded from a folder.
    val qnn = file("src/main/jniLibs/arm64-v8a/libQnnHtp.so").exists()
    packaging { jniLibs { useLegacyPackaging = qnn } }
    // A bundle too large for the base APK goes to an install-time asset pack (see meki bundle).
    if (rootProject.file("meki_assets/build.gradle.kts").exists()) assetPacks += listOf(":meki_assets")
}

dependencies {
    implementation(project(":meki-runtime"))
    implementation("org.pytorch:executorch-android:1.0.1")
}
