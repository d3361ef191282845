// meki-runtime: src/core/java is plain Java (no Android imports; also built and tested by
// scripts/jvm_test.sh with a bare JDK), src/main/java the Android part (assets, ExecuTorch, LiteRT).
plugins { id("com.android.library") }

android {
    namespace = "ai.meki.runtime"
    compileSdk = 35
    defaultConfig { minSdk = 26 }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_11
        targetCompatibility = JavaVersion.VERSION_11
    }
    sourceSets["main"].java.srcDirs("src/main/java", "src/core/java")
    testOptions.unitTests.all {
        it.useJUnitPlatform()
        it.systemProperty("meki.golden", rootDir.resolve("../conformance/golden").path)
        it.systemProperty("meki.conformance", rootDir.resolve("../conformance").path)
        it.systemProperty("meki.bundle", layout.buildDirectory.dir("test-bundle").get().asFile.path)
        it.dependsOn("makeTestBundle")
    }
}

// The manifest tests read a bundle written by the Python manifest writer (needs ../.venv).
tasks.register<Exec>("makeTestBundle") {
    val out = layout.buildDirectory.dir("test-bundle").get().asFile
    doFirst { out.deleteRecursively() }
    commandLine(rootDir.resolve("../.venv/bin/python").path, rootDir.resolve("scripts/make_test_bundle.py").path, out.path)
}

dependencies {
    implementation("org.pytorch:executorch-android:1.0.1")
    implementation("com.google.ai.edge.litert:litert:2.3.0")   // CompiledModel + NPU accelerator (tflite-qnn)
    testImplementation("org.junit.jupiter:junit-jupiter:5.9.2")
    testRuntimeOnly("org.junit.platform:junit-platform-launcher:1.9.2")
    testImplementation("org.json:json:20240303")   // android.jar's org.json is a stub in unit tests
}
