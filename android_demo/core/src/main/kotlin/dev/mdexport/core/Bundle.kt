package dev.mdexport.core

import java.io.File

/** Read access to a bundle folder (a directory on disk, or the app's assets). Paths are relative, '/'-separated. */
interface BundleFiles {
    /** Where the bundle is, for messages (e.g. "assets/model" or a directory path). */
    val location: String
    fun exists(path: String): Boolean
    fun readText(path: String): String
    /** Size in bytes, or null when it cannot be known cheaply. */
    fun size(path: String): Long?
}

class DirectoryBundleFiles(val root: File) : BundleFiles {
    override val location: String get() = root.path
    override fun exists(path: String) = File(root, path).isFile
    override fun readText(path: String) = File(root, path).readText(Charsets.UTF_8)
    override fun size(path: String): Long? = File(root, path).takeIf { it.isFile }?.length()
}

/**
 * A checked bundle: manifest parsed and validated, every file it names present (with the size
 * the manifest records), tokenizer and scheduler config loaded.
 */
class Bundle(
    val files: BundleFiles,
    val manifest: Manifest,
    val tokenizer: ClipTokenizer,
    val schedulerConfig: SchedulerConfig,
) {
    companion object {
        const val MANIFEST = "manifest.json"
        const val SCHEDULER = "scheduler.json"

        fun open(files: BundleFiles, target: String = "tflite"): Bundle {
            val where = files.location
            if (!files.exists(MANIFEST)) {
                throw BundleException("$where/$MANIFEST not found: copy md-export's out/$target/ folder to $where")
            }
            val manifest = try {
                Manifest.parse(files.readText(MANIFEST))
            } catch (e: BundleException) {
                throw BundleException("$where/${e.message}")
            }
            manifest.requireTarget(target)
            for (m in manifest.models.values) {
                if (m.key !in listOf(Manifest.TEXT_ENCODER, Manifest.UNET, Manifest.VAE_DECODER)) continue
                if (!files.exists(m.file)) throw BundleException("$where/${m.file} not found (models.${m.key}.file in $MANIFEST)")
                val size = files.size(m.file)
                if (m.bytes != null && size != null && size != m.bytes) {
                    throw BundleException(
                        "$where/${m.file} is $size bytes but $MANIFEST says ${m.bytes}: the copy is incomplete or from another export"
                    )
                }
            }
            val t = manifest.pipeline.tokenizer
            for (f in listOf(t.vocab, t.merges, SCHEDULER)) {
                if (!files.exists(f)) throw BundleException("$where/$f not found")
            }
            val tokenizer = ClipTokenizer.fromText(
                files.readText(t.vocab), files.readText(t.merges),
                t.bosTokenId, t.eosTokenId, t.padTokenId, manifest.pipeline.textMaxLength,
                vocabSource = "$where/${t.vocab}", mergesSource = "$where/${t.merges}",
            )
            val scheduler = SchedulerConfig.parse(files.readText(SCHEDULER), "$where/$SCHEDULER")
            return Bundle(files, manifest, tokenizer, scheduler)
        }
    }
}
