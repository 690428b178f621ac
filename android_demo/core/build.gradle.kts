// Pure Kotlin/JVM: no Android, no dependencies but the Kotlin stdlib (JUnit for tests).
// Without Gradle: ./run-jvm-tests.sh compiles and runs the same tests with kotlinc.
plugins {
    id("org.jetbrains.kotlin.jvm")
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    // The tokenizer tests read the real CLIP vocab committed with md-export.
    systemProperty("mdexport.tokenizerDir", rootProject.file("../src/md_export/default_model/tokenizer").absolutePath)
}
